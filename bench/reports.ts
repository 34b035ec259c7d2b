/** Reads the local stack's REPORT lines (local/lambda.ts prints one per invocation, in Lambda's format). */

export interface Report {
  functionName: string;
  durationMs: number;
  /** Absent when the instance died (crash, timeout): it could not measure itself. */
  maxMemoryUsedMb?: number;
  initDurationMs?: number;
  cpuMs?: number;
  error?: string;
}

const LINE = /^\[([^\]]+)\] REPORT RequestId: \S+\tDuration: ([\d.]+) ms\tBilled Duration: \d+ ms\tMemory Size: \d+ MB(?:\tMax Memory Used: (\d+) MB)?(?:\tInit Duration: ([\d.]+) ms)?(?:\tCPU Time: ([\d.]+) ms)?(?:\tStatus: error\tError Type: (\S+))?/;

export function parseReports(text: string): Report[] {
  const reports: Report[] = [];
  for (const line of text.split("\n")) {
    const m = LINE.exec(line);
    if (!m) continue;
    reports.push({
      functionName: m[1],
      durationMs: Number(m[2]),
      ...(m[3] ? { maxMemoryUsedMb: Number(m[3]) } : {}),
      ...(m[4] ? { initDurationMs: Number(m[4]) } : {}),
      ...(m[5] ? { cpuMs: Number(m[5]) } : {}),
      ...(m[6] ? { error: m[6] } : {}),
    });
  }
  return reports;
}

/** Reports of functions whose name contains one of `parts` (e.g. "-sendmessage-", "-fanout-"). */
export function reportsOf(reports: Report[], ...parts: string[]): Report[] {
  return reports.filter((r) => parts.some((p) => r.functionName.includes(p)));
}
