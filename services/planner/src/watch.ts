// WatchUpgrade: a snapshot of the upgrade, then its step events replayed from the events
// stream (from the start, or from a given stream sequence) and followed live, with a new
// snapshot whenever the upgrade's state changes (at most every 250 ms). The stream ends
// once the upgrade has ended and every one of its events has been sent.
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import type { planner } from "@ferry/proto";
import { events } from "@ferry/proto";
import { EVENTS_STREAM, eventFilter, type NatsConnection } from "@ferry/messaging";
import type { UpgradeStore } from "./adapters/upgrade-store.ts";
import { isActive } from "./domain/progress.ts";

type Item = planner.WatchUpgradeResponse;

export async function* watchUpgrade(
  nc: NatsConnection,
  store: UpgradeStore,
  get: (id: string) => planner.Upgrade,
  req: planner.WatchUpgradeRequest,
  signal: AbortSignal,
): AsyncGenerator<Item> {
  const first = get(req.id); // NOT_FOUND before anything streams
  const queue: Item[] = [{ snapshot: first, streamSeq: 0 }];
  let wake: (() => void) | undefined;
  const push = (i: Item) => {
    queue.push(i);
    wake?.();
  };
  let ended = !isActive(first);
  let lastEventAt = Date.now();
  let pending = Infinity;
  let snapTimer: NodeJS.Timeout | undefined;
  let lastSnap = 0;
  const snapshot = () => {
    snapTimer = undefined;
    lastSnap = Date.now();
    const u = get(req.id);
    ended = !isActive(u);
    push({ snapshot: u, streamSeq: 0 });
  };
  const off = store.onChange((id) => {
    if (id !== req.id || snapTimer) return;
    snapTimer = setTimeout(snapshot, Math.max(0, 250 - (Date.now() - lastSnap)));
  });
  const consumer = await jetstream(nc).consumers.get(EVENTS_STREAM, {
    filter_subjects: [eventFilter(req.id)],
    ...(req.fromStreamSeq > 0
      ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: req.fromStreamSeq }
      : { deliver_policy: DeliverPolicy.All }),
  });
  const messages = await consumer.consume();
  void (async () => {
    for await (const m of messages) {
      lastEventAt = Date.now();
      pending = m.info.pending;
      try {
        push({ event: events.StepEvent.decode(m.data), streamSeq: m.seq });
      } catch {
        // not a step event: skipped
      }
    }
  })();
  const tick = setInterval(() => wake?.(), 200);
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    while (!signal.aborted) {
      const next = queue.shift();
      if (next) {
        yield next;
        continue;
      }
      // Ended, caught up (or no events at all), and quiet for a moment: done.
      if (ended && !snapTimer && (pending === 0 || pending === Infinity) && Date.now() - lastEventAt > 500) return;
      await new Promise<void>((r) => (wake = r));
    }
  } finally {
    clearInterval(tick);
    clearTimeout(snapTimer);
    signal.removeEventListener("abort", onAbort);
    off();
    await messages.close().catch(() => undefined);
  }
}
