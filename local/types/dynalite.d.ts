declare module "dynalite" {
  import type { Server } from "http";
  interface DynaliteOptions {
    path?: string;
    createTableMs?: number;
    deleteTableMs?: number;
    updateTableMs?: number;
    maxItemSizeKb?: number;
    verbose?: boolean;
    /** Not dynalite's: read by local/stream-capture.ts's hook (dynalite keeps its options as `store.options`). */
    localStreams?: unknown;
  }
  function dynalite(options?: DynaliteOptions): Server;
  export = dynalite;
}
