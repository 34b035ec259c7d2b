/**
 * Writes held until the end of the event loop's I/O phase: every socket corked here is uncorked
 * together in one `setImmediate`, so the answers and frames a batch of requests causes leave as a
 * burst instead of one at a time between reads. Order on each socket is kept (they are the same
 * stream); a socket's `end()` sends what is held. `destroy()` would drop it, so code that destroys
 * or hands over a socket it may have held calls `releaseWrites` first (a write not held would have
 * reached the kernel before the destroy).
 *
 * Why: every write to a loopback socket wakes the process reading it. Written one at a time, with
 * the work of the next post between them, the stack's answers and frames woke a function instance
 * or the clients once per post, and the kernel's wake-up path was the largest cost after the
 * stack's own code (perf, a room of 100 at 25 msg/s). Held, the stack's process spent 7.96–8.22
 * ms of CPU per message in that room, against 9.04–9.92 ms (two runs each, alternated).
 * The functions' own client (handlers/shared/http1.ts) does not hold its posts: tried the same
 * way, it changed nothing measurable.
 */
import type { Writable } from "stream";

/** A socket, or any stream that can hold writes. */
export type Holdable = Pick<Writable, "cork" | "uncork" | "destroyed">;

const corked = new Set<Holdable>();
let scheduled = false;

function flush(): void {
  scheduled = false;
  const sockets = [...corked];
  corked.clear();
  for (const socket of sockets) if (!socket.destroyed) socket.uncork();
}

/** Corks `socket` until the current I/O phase ends (at most once per turn of the loop). */
export function holdWrites(socket: Holdable): void {
  if (corked.has(socket) || socket.destroyed) return;
  socket.cork();
  corked.add(socket);
  if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
}

/** Sends what `socket` holds now, and holds nothing more for it this turn (before a destroy or a hand-over). */
export function releaseWrites(socket: Holdable): void {
  if (corked.delete(socket) && !socket.destroyed) socket.uncork();
}
