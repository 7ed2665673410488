// The planner's durable consumer of step events. Acks are explicit, one per event: with
// ack-all, a later event acked by a new leader would also ack an earlier one that was
// delivered to the old leader and never applied. Events come back after 10 s unacked, or
// at once when a leader that stops naks them.
import { jetstreamManager, jetstream, AckPolicy, DeliverPolicy, type ConsumerMessages } from "@nats-io/jetstream";
import { EVENTS_STREAM, eventFilter, type NatsConnection } from "@ferry/messaging";
import type { Logger } from "@ferry/runtime";

export const CONSUMER = "ferry-planner";

/** Declares the durable consumer (recreating it when its immutable config differs) and consumes it. */
export async function consumeEvents(nc: NatsConnection, log: Logger): Promise<ConsumerMessages> {
  const jsm = await jetstreamManager(nc);
  const config = {
    durable_name: CONSUMER,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    filter_subject: eventFilter(),
    ack_wait: 10_000_000_000,
    max_ack_pending: 100_000,
  };
  try {
    await jsm.consumers.add(EVENTS_STREAM, config);
  } catch (err) {
    // A consumer made with another (immutable) ack policy: start it again from the
    // beginning; every event already applied is a duplicate by its sequence.
    log.warn({ err: (err as Error).message }, "recreating the events consumer");
    await jsm.consumers.delete(EVENTS_STREAM, CONSUMER);
    await jsm.consumers.add(EVENTS_STREAM, config);
  }
  const consumer = await jetstream(nc).consumers.get(EVENTS_STREAM, CONSUMER);
  return consumer.consume({ max_messages: 2000 });
}
