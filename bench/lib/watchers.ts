// bench:planner's two watchers of one rollout, in a worker thread of their own so the
// simulated fleet (10,000 boards in the bench's main thread) cannot delay what they
// measure: a WatchUpgrade client of the planner, and the baseline, a bare JetStream
// consumer of the same events read the way WatchUpgrade reads them (ordered, pulls of
// 1,000). Each records, per event, how long after the stream stored it (and after the
// board made it) it arrived. The main thread starts it with workerData
// { natsUrl, plannerAddr, upgradeId } and receives { ready } once both watch, then
// { done } with the figures when the upgrade has succeeded and its events are all in.
import { parentPort, workerData } from "node:worker_threads";
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import { planner } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { connectNats, EVENTS_STREAM, eventFilter } from "@ferry/messaging";

export interface WatchFigures {
  /** Board's event time → received by the WatchUpgrade client (ms). */
  latencies: number[];
  /** Stored in the stream → received by the WatchUpgrade client (ms). */
  fromStored: number[];
  /** Stored in the stream → received by the bare consumer (ms). */
  bare: number[];
  succeeded: boolean;
}

const { natsUrl, plannerAddr, upgradeId } = workerData as { natsUrl: string; plannerAddr: string; upgradeId: string };
const nc = await connectNats({ url: natsUrl, name: "bench bare consumer" });
const bare: number[] = [];
const bareMsgs = await (
  await jetstream(nc).consumers.get(EVENTS_STREAM, { filter_subjects: [eventFilter(upgradeId)], deliver_policy: DeliverPolicy.All })
).consume({ max_messages: 1000 });
void (async () => {
  for await (const m of bareMsgs) bare.push(Date.now() - m.info.timestampNanos / 1e6);
})();
const client = createClient(planner.PlannerServiceService, plannerAddr, { deadlineMs: 600_000 });
// The upgrade does not exist yet: the main thread creates it once this says ready.
parentPort!.postMessage({ ready: true });
await new Promise<void>((r) => parentPort!.once("message", () => r()));
const figures: WatchFigures = { latencies: [], fromStored: [], bare, succeeded: false };
for await (const r of client.watchUpgrade({ id: upgradeId, fromStreamSeq: 0 })) {
  if (r.event?.time) figures.latencies.push(Date.now() - r.event.time.getTime());
  if (r.storedAt) figures.fromStored.push(Date.now() - r.storedAt.getTime());
  if (r.snapshot && r.snapshot.phase === planner.UpgradePhase.UPGRADE_PHASE_SUCCEEDED) figures.succeeded = true;
}
await bareMsgs.close();
client.close();
await nc.close();
parentPort!.postMessage({ done: figures });
