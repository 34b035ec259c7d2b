/**
 * One structured JSON line per event worth recording. CloudWatch Logs Insights parses these
 * fields directly; the local stack prints them behind the function's name.
 */
export type LogLevel = "info" | "warn" | "error";

export function log(level: LogLevel, msg: string, fields: Record<string, unknown> = {}): void {
  const line = JSON.stringify({ level, msg, ...fields });
  if (level === "error") console.error(line);
  else if (level === "warn") console.warn(line);
  else console.log(line);
}
