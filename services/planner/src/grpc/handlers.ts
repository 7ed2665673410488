// PlannerService handlers: proto in, domain call, proto out. No logic lives here.
import type { planner } from "@ferry/proto";
import type { Implementation } from "@ferry/grpc";
import { readAudit, type NatsConnection } from "@ferry/messaging";
import type { UpgradeStore } from "../adapters/upgrade-store.ts";
import type { Planner } from "../planner.ts";
import type { Admission } from "../admission.ts";
import { watchUpgrade } from "../watch.ts";

/** Counts what is open (WatchUpgrade streams, for /metrics). */
export interface OpenCount {
  inc(): void;
  dec(): void;
}

export function plannerHandlers(
  p: Planner,
  admission: Admission,
  nc: () => NatsConnection,
  store: UpgradeStore,
  streams: OpenCount,
): Implementation<typeof planner.PlannerServiceService> {
  return {
    listNodes: async (req) => p.listNodes(req.selector),
    getNode: async (req) => p.getNode(req.name),
    previewUpgrade: async (req, ctx) => p.preview(req.spec, ctx.signal),
    createUpgrade: async (req, ctx) => p.create(req, ctx.signal),
    getUpgrade: async (req) => p.get(req.id),
    listUpgrades: async () => p.list(),
    watchUpgrade: (req, ctx) =>
      counted(
        streams,
        watchUpgrade(nc(), store, (id) => p.get(id), req, ctx.signal),
      ),
    pauseUpgrade: async (req) => p.pause(req),
    resumeUpgrade: async (req) => p.resume(req),
    cancelUpgrade: async (req) => p.cancel(req),
    approveUpgrade: async (req) => p.approve(req),
    releaseNode: async (req) => p.releaseNode(req),
    forgetNode: async (req) => p.forgetNode(req),
    listAuditRecords: async (req) => ({
      records: await readAudit(nc(), { since: req.since, limit: req.limit, service: req.service, principal: req.principal }),
    }),
    listAdmissions: async (req) => ({ admissions: await admission.list(req.state) }),
    admitNode: async (req) => admission.admit(req),
    revokeNode: async (req) => admission.revoke(req),
    enrollNode: async (req) => admission.enroll(req),
  };
}

async function* counted<T>(open: OpenCount, items: AsyncIterable<T>): AsyncGenerator<T> {
  open.inc();
  try {
    yield* items;
  } finally {
    open.dec();
  }
}
