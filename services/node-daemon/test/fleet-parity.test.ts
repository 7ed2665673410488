// SimFleet (the planner's fast fake board) and the real daemon (runner and controller on a
// simulated board with the real U-Boot tools) answer the same assignment sequences the same
// way at their gates: waiting, passing, cancelling.
import { describe, expect, it } from "vitest";
import { events } from "@ferry/proto";
import { connectNats, ensureEventsStream } from "@ferry/messaging";
import { NatsServer, tempDir, waitFor } from "@ferry/testing";
import { SimFleet } from "../src/sim/fleet.ts";
import { harness, type Harness } from "./board-harness.ts";
import { boardKeyring } from "./fixtures.ts";

type Gate = "waiting-reboot" | "waiting-commit" | "committed" | "cancelled" | "other";
const N = events.NodeState;
const settle = () => new Promise((r) => setTimeout(r, 400));

/** Where the real daemon is, in the terms both share. */
async function daemonAt(h: Harness): Promise<Gate> {
  const j = await h.journal.read();
  const r = (await h.state.read())?.lastResult;
  if (!j) return r?.outcome === "committed" ? "committed" : r?.code === "CANCELLED" ? "cancelled" : "other";
  return j.phase === "readback-ok" ? "waiting-reboot" : j.phase === "healthy" ? "waiting-commit" : "other";
}

function simAt(fleet: SimFleet): Gate {
  const b = fleet.boards.get("n1")!;
  if (b.state === N.NODE_STATE_WAITING_REBOOT) return "waiting-reboot";
  if (b.state === N.NODE_STATE_WAITING_COMMIT) return "waiting-commit";
  if (b.state === N.NODE_STATE_IDLE && b.version === "v1.34.6") return "committed";
  if (b.state === N.NODE_STATE_FAILED && /CANCELLED|cancelled/.test(b.message)) return "cancelled";
  return "other";
}

describe("SimFleet has the real daemon's gate semantics", () => {
  const sequences: Array<
    [string, Array<[string, (a: (o?: Partial<events.Assignment>) => events.Assignment) => events.Assignment | undefined, Gate]>]
  > = [
    [
      "closed, deleted, a stale term, granted, commit after the boot",
      [
        ["assigned, gates closed", (a) => a({ term: 2 }), "waiting-reboot"],
        ["the key deleted", () => undefined, "waiting-reboot"],
        ["a stale term grants the reboot", (a) => a({ term: 1, rebootAllowed: true }), "waiting-reboot"],
        ["the reboot granted", (a) => a({ term: 2, rebootAllowed: true }), "waiting-commit"],
        ["the commit granted", (a) => a({ term: 2, rebootAllowed: true, commitAllowed: true }), "committed"],
      ],
    ],
    [
      "cancelled at the reboot gate",
      [
        ["assigned, gates closed", (a) => a(), "waiting-reboot"],
        ["cancelled", (a) => a({ cancel: true }), "cancelled"],
        ["un-cancelled (too late)", (a) => a({ rebootAllowed: true }), "cancelled"],
      ],
    ],
    [
      "superseded by another upgrade at the reboot gate",
      [
        ["assigned, gates closed", (a) => a(), "waiting-reboot"],
        ["another upgrade", (a) => a({ upgradeId: "up-other" }), "waiting-reboot"],
      ],
    ],
  ];

  it.each(sequences)("%s", async (_name, steps) => {
    await using nats = await NatsServer.start();
    const nc = await connectNats({ url: nats.url, name: "parity" });
    await ensureEventsStream(nc);
    using dir = tempDir();
    const h = await harness(dir.path);
    const fleet = new SimFleet(nc, [{ name: "n1", board: "ls1046a", role: "worker", version: "v1.33.5", behaviour: "healthy" }], {
      heartbeatMs: 60_000,
      stepMs: 2,
      gatePollMs: 10,
      keyring: boardKeyring,
    });
    await fleet.start();
    let p = h.process();
    try {
      for (const [what, make, want] of steps) {
        const a = make(h.assignment);
        fleet.assign("n1", a);
        await p.controller.setAssignment(a);
        // The real daemon reboots into the trial when it passes its reboot gate (NATS slow afterwards).
        await settle();
        if (p.controller.lastOutcome === "rebooting") {
          await h.board.powerOn();
          p = h.process();
          await p.controller.reconcile();
          await p.controller.setAssignment(a);
        }
        // Both settle where the sequence says (the real daemon writes a slot: give it time on a loaded machine).
        const at = async () => ({ daemon: await daemonAt(h), sim: simAt(fleet) });
        await waitFor(async () => JSON.stringify(await at()) === JSON.stringify({ daemon: want, sim: want }), {
          timeoutMs: 15_000,
          what: what,
        }).catch(() => undefined);
        await settle(); // and stay there
        expect(await at(), what).toEqual({ daemon: want, sim: want });
      }
    } finally {
      fleet.stop();
      h.close();
      await nc.close();
    }
  });
});
