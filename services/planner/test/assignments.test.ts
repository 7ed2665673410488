// The assignment projection against a real nats-server: every write is signed with the
// planner's key for its node, under this term, with an issue time that only grows and an
// expiry; an unchanged assignment is re-signed once half its lifetime is gone, not before;
// a board's keyring accepts each write in turn.
import { describe, expect, it } from "vitest";
import { events, planner } from "@ferry/proto";
import { CHANNELS, connectNats, TypedBucket } from "@ferry/messaging";
import { createLogger } from "@ferry/runtime";
import { acceptAssignment, createKeyring, generateKeyPair, loadSigningKey, markOf, type AssignmentMark } from "@ferry/signing";
import { NatsServer } from "@ferry/testing";
import { ASSIGNMENT_TTL_MS, AssignmentProjection } from "../src/assignments.ts";

describe("assignment projection", () => {
  it("signs each node's assignment, re-signs it half way to its expiry, and a board accepts every write", async () => {
    await using nats = await NatsServer.start();
    const nc = await connectNats({ url: nats.url, name: "test" });
    try {
      const kv = await TypedBucket.open(nc, CHANNELS.assignments);
      const pair = generateKeyPair();
      const ring = createKeyring([generateKeyPair().publicPem], 1, [pair.publicPem]);
      let clock = Date.parse("2026-12-03T00:00:00Z");
      const projection = new AssignmentProjection({
        kv,
        key: loadSigningKey(pair.privatePem),
        log: createLogger("test", "silent"),
        term: 7,
        isLeader: () => true,
        originFallback: false,
        urlsFor: () => ["http://site:7480"],
        released: () => undefined,
        now: () => clock,
      });
      const u = planner.Upgrade.fromPartial({ id: "u1", spec: {} });
      const plans = new Map([
        ["w-1", planner.NodePlan.fromPartial({ node: "w-1", board: "b", hops: ["v1.34.2"] })],
        ["w-2", planner.NodePlan.fromPartial({ node: "w-2", board: "b", hops: ["v1.34.2"] })],
      ]);
      const progress = [...plans.keys()].map((node) =>
        planner.NodeProgress.fromPartial({ node, runState: planner.NodeRunState.NODE_RUN_STATE_ACTIVE, hopCount: 1, version: "v1.33.4" }),
      );
      const seen = new Map<string, AssignmentMark>();
      const revisions = async () => Promise.all(["w-1", "w-2"].map(async (n) => (await kv.get(n))?.revision));
      const board = async (node: string) => {
        const a = acceptAssignment((await kv.get(node))!.value, ring, {
          node,
          now: new Date(clock),
          ...(seen.has(node) ? { seen: seen.get(node)! } : {}),
        });
        seen.set(node, markOf(a));
        return a;
      };

      expect(await projection.sync(u, plans, progress)).toBe(true);
      const first = await board("w-1");
      expect(first).toMatchObject({ node: "w-1", term: 7, upgradeId: "u1", targetVersion: "v1.34.2" });
      expect(first.expiresAt!.getTime() - first.updatedAt!.getTime()).toBe(ASSIGNMENT_TTL_MS);
      expect((await board("w-2")).updatedAt!.getTime()).toBeGreaterThan(first.updatedAt!.getTime()); // unique, growing issue times
      const before = await revisions();

      // Unchanged and young: not rewritten.
      clock += ASSIGNMENT_TTL_MS / 2 - 60_000;
      await projection.sync(u, plans, progress);
      expect(await revisions()).toEqual(before);
      // Past half its lifetime: re-signed, later, and still accepted by the board.
      clock += 120_000;
      await projection.sync(u, plans, progress);
      expect(await revisions()).not.toEqual(before);
      const again = await board("w-1");
      expect(again.updatedAt!.getTime()).toBe(clock);
      expect(again.expiresAt!.getTime()).toBe(clock + ASSIGNMENT_TTL_MS);
      // A change (the reboot gate opens) is written at once, under the same term and a later time.
      clock += 1;
      progress[0]!.rebootGranted = true;
      await projection.sync(u, plans, progress);
      const granted = await board("w-1");
      expect(granted.rebootAllowed).toBe(true);
      expect(granted.updatedAt!.getTime()).toBeGreaterThan(again.updatedAt!.getTime());
      expect(events.SignedAssignment.encode((await kv.get("w-1"))!.value).finish().length).toBeLessThan(CHANNELS.assignments.payload.maxBytes);
    } finally {
      await nc.close();
    }
  });
});
