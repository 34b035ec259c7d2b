/**
 * Waiting for a piece of the local stack to go idle (no invocation or delivery in flight), as its
 * stop does: one small helper for the Lambda runtime and the stream poller.
 */
export interface IdleWatch {
  /** Call when the work in flight drops to none: wakes every waiter. */
  idle(): void;
  /** True at once when idle now, else when `idle()` is called; false after `timeoutMs`. */
  wait(isIdle: boolean, timeoutMs: number): Promise<boolean>;
}

export function idleWatch(): IdleWatch {
  const waiters = new Set<() => void>();
  return {
    idle() {
      for (const wake of [...waiters]) wake();
    },
    wait(isIdle, timeoutMs) {
      if (isIdle) return Promise.resolve(true);
      return new Promise((resolve) => {
        const settle = (value: boolean) => {
          clearTimeout(timer);
          waiters.delete(onIdle);
          resolve(value);
        };
        const onIdle = () => settle(true);
        const timer = setTimeout(() => settle(false), timeoutMs);
        waiters.add(onIdle);
      });
    },
  };
}
