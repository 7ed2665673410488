// NodeService on the board: proto <-> the daemon's controller and runner. Handlers throw
// FerryError (mapped to gRPC status once, by @ferry/grpc).
import type { events, node as nodepb } from "@ferry/proto";
import type { Implementation } from "@ferry/grpc";
import { MANUAL_UPGRADE_ID } from "@ferry/messaging";
import { imageFor, parseManifest } from "@ferry/release";
import { failedPrecondition, invalidArgument, type AtomicJsonFile, type Logger } from "@ferry/runtime";
import type { Journal } from "../steps/ports.ts";
import { blobUrl, type DaemonController } from "../controller.ts";
import type { Outbox } from "../adapters/outbox.ts";
import type { Runner } from "../steps/runner.ts";
import { reached } from "../steps/runner.ts";

export interface HandlerDeps {
  board: string;
  distributorUrl: string;
  controller: DaemonController;
  runner: Runner;
  journal: AtomicJsonFile<Journal>;
  outbox: Outbox;
  status: () => Promise<events.NodeStatus>;
  log: Logger;
}

const MAX_HEALTH_TIMEOUT_S = 24 * 3600;

export function nodeService(d: HandlerDeps): Implementation<typeof nodepb.NodeServiceService> {
  return {
    getStatus: () => d.status(),

    watchEvents: async function* (req, ctx) {
      const queue: events.StepEvent[] = d.outbox.recent.filter((e) => e.seq > req.afterSeq);
      let wake: (() => void) | undefined;
      const onEvent = (e: events.StepEvent) => {
        queue.push(e);
        wake?.();
      };
      d.outbox.on("event", onEvent);
      ctx.signal.addEventListener("abort", () => wake?.(), { once: true });
      try {
        while (!ctx.signal.aborted) {
          const next = queue.shift();
          if (next) yield next;
          else await new Promise<void>((r) => (wake = r));
        }
      } finally {
        d.outbox.off("event", onEvent);
      }
    },

    install: async (req) => {
      const a = d.controller.assignment;
      if (a && !a.cancel)
        throw failedPrecondition(`node is assigned upgrade ${a.upgradeId}; a manual install is refused while an assignment is active`, "ASSIGNED");
      if (d.controller.running || (await d.journal.read())) throw failedPrecondition("an install is already in progress", "BUSY");
      if (!req.envelope || req.envelope.manifest.length === 0)
        throw invalidArgument("envelope is required (a signed release manifest)", "ENVELOPE_REQUIRED");
      if (req.healthTimeoutSeconds > MAX_HEALTH_TIMEOUT_S) throw invalidArgument(`health_timeout_seconds must be at most ${MAX_HEALTH_TIMEOUT_S}`);
      if (req.url && !/^https?:\/\/[^\s]+$/.test(req.url))
        throw invalidArgument(`url must be an http(s) URL, got ${JSON.stringify(req.url.slice(0, 200))}`);
      let manifest;
      try {
        manifest = parseManifest(req.envelope.manifest);
      } catch (err) {
        throw invalidArgument(`the envelope's manifest is not valid: ${(err as Error).message}`, "MANIFEST_INVALID");
      }
      const img = imageFor(manifest, d.board);
      const urls = [req.url, d.distributorUrl && img ? blobUrl(d.distributorUrl, img.compressedSha256) : "", img?.url ?? ""].filter(Boolean);
      const id = `${MANUAL_UPGRADE_ID}-${Date.now()}`;
      // launch() throws BUSY synchronously when a run holds the daemon; the runner's journal
      // is created exclusively, so a racing reconcile cannot start a second writer either.
      d.controller
        .launch(() =>
          d.runner.begin({
            upgradeId: id,
            hopIndex: 0,
            envelope: req.envelope!,
            urls,
            healthTimeoutSeconds: req.healthTimeoutSeconds || 600,
            grant: { upgradeId: id, hopIndex: 0, term: 0, rebootAllowed: true, commitAllowed: !req.holdCommit, cancel: false, local: true },
          }),
        )
        .catch(() => undefined);
      return { upgradeId: id };
    },

    commit: async () => {
      const j = d.runner.current;
      if (!j || !reached(j, "booted") || reached(j, "committed") || j.phase === "rolling-back")
        throw failedPrecondition("no trial boot is waiting for a commit", "NO_TRIAL");
      if (!j.grant.local) throw failedPrecondition(`this trial belongs to upgrade ${j.upgradeId}: the planner grants its commit`, "PLANNER_GRANTS");
      await d.runner.grantLocally({ commitAllowed: true });
      d.log.info({ upgradeId: j.upgradeId }, "commit granted locally");
      return {};
    },

    rollback: async (req) => {
      if (!d.runner.current) throw failedPrecondition("no install is in progress", "NO_RUN");
      await d.runner.grantLocally({ cancel: true });
      d.log.warn({ reason: req.reason }, "rollback requested");
      return {};
    },
  };
}
