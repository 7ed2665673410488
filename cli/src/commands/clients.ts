// The CLI's context and its gRPC clients, one per call.
import { catalog, distributor, planner } from "@ferry/proto";
import { createClient, loadClientOptions } from "@ferry/grpc";

export interface Ctx {
  print: (json: unknown, text: () => string) => void;
  addrs: () => { catalog: string; planner: string; distributor: string };
  int: (name: string) => (v: string) => number;
}

type Clients = {
  planner: ReturnType<typeof createClient<typeof planner.PlannerServiceService>>;
  distributor: ReturnType<typeof createClient<typeof distributor.DistributorServiceService>>;
  catalog: ReturnType<typeof createClient<typeof catalog.CatalogServiceService>>;
};

export async function using<K extends keyof Clients, T>(ctx: Ctx, which: K, fn: (c: Clients[K]) => Promise<T>): Promise<T> {
  const a = ctx.addrs();
  const opts = loadClientOptions();
  const c = (
    which === "planner"
      ? createClient(planner.PlannerServiceService, a.planner, opts)
      : which === "distributor"
        ? createClient(distributor.DistributorServiceService, a.distributor, { ...opts, deadlineMs: 3_600_000 })
        : createClient(catalog.CatalogServiceService, a.catalog, opts)
  ) as Clients[K];
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}
