/** Small process helpers shared by the launcher (local/cli.ts, kept light) and the stack. */

/** Whether a process exists (EPERM: it does, but is not ours). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
