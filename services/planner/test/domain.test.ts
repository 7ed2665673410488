// Pure pieces of the planner: selectors, maintenance windows, event application.
import { describe, expect, it } from "vitest";
import { events, planner } from "@ferry/proto";
import { parseSelector } from "../src/domain/selector.ts";
import { inWindow, parseWindow } from "../src/domain/window.ts";
import { decide } from "../src/domain/rollout.ts";
import { applyEvent, newProgress } from "../src/domain/progress.ts";

describe("label selectors", () => {
  const labels = { site: "berlin", role: "worker", zone: "a" };
  it.each([
    ["", true],
    ["site=berlin", true],
    ["site==berlin,role=worker", true],
    ["site!=berlin", false],
    ["zone in (a, b)", true],
    ["zone notin (a,b)", false],
    ["site", true],
    ["!site", false],
    ["!gpu,site=berlin", true],
    ["missing=x", false],
    ["missing!=x", true],
  ])("%s → %s", (sel, want) => expect(parseSelector(sel)(labels)).toBe(want));

  it.each(["a=b,", "=b", "a b c", "bad key!=x", "zone in (a,b c)", "a=b=c"])("refuses %s with a clear error", (sel) => {
    expect(() => parseSelector(sel)).toThrow(/selector/);
  });
});

describe("maintenance windows", () => {
  const at = (hhmm: string) => new Date(`2026-11-22T${hhmm}:00Z`);
  it("handles plain and midnight-wrapping windows", () => {
    const w = parseWindow("01:00-05:00");
    expect(inWindow(w, at("00:59"))).toBe(false);
    expect(inWindow(w, at("01:00"))).toBe(true);
    expect(inWindow(w, at("04:59"))).toBe(true);
    expect(inWindow(w, at("05:00"))).toBe(false);
    const night = parseWindow("22:00-02:00");
    expect(inWindow(night, at("23:30"))).toBe(true);
    expect(inWindow(night, at("01:30"))).toBe(true);
    expect(inWindow(night, at("12:00"))).toBe(false);
    expect(inWindow(parseWindow(""), at("12:00"))).toBe(true);
  });
  it.each(["1-5", "25:00-02:00", "01:00-01:00", "01:60-02:00", "01:00 - 02:00x"])("refuses %s", (w) => {
    expect(() => parseWindow(w)).toThrow(/maintenance window/);
  });
});

const { StepName: S, StepState: T } = events;

function upgrade(): planner.Upgrade {
  const plan: planner.NodePlan = {
    node: "n1",
    role: events.Role.ROLE_WORKER,
    fromVersion: "v1.33.4",
    hops: ["v1.34.5"],
    downloadBytes: 10,
    reboots: 1,
    wave: 1,
    heldBackReason: "",
    board: "b",
    heldBackCode: "",
  };
  const g = newProgress(plan, new Date(), false);
  g.runState = planner.NodeRunState.NODE_RUN_STATE_ACTIVE;
  g.holdsSlot = true;
  return planner.Upgrade.fromPartial({
    id: "u",
    phase: planner.UpgradePhase.UPGRADE_PHASE_RUNNING,
    plan: [plan],
    progress: [g],
    spec: { target: "v1.34.5", strategy: { maxUnavailable: 1 } },
  });
}

const ev = (seq: number, step: events.StepName, state: events.StepState, over: Partial<events.StepEvent> = {}) =>
  events.StepEvent.fromPartial({ upgradeId: "u", node: "n1", hopIndex: 0, toVersion: "v1.34.5", step, state, seq, time: new Date(), ...over });

describe("step events", () => {
  it("duplicates and stale reorderings change nothing", () => {
    const u = upgrade();
    expect(applyEvent(u, ev(1, S.STEP_NAME_PREFLIGHT, T.STEP_STATE_STARTED))).toBe(true);
    expect(applyEvent(u, ev(2, S.STEP_NAME_WRITE_SLOT, T.STEP_STATE_PROGRESS, { bytesDone: 50, bytesTotal: 100 }))).toBe(true);
    const before = planner.Upgrade.encode(u).finish();
    expect(applyEvent(u, ev(2, S.STEP_NAME_WRITE_SLOT, T.STEP_STATE_PROGRESS, { bytesDone: 50, bytesTotal: 100 }))).toBe(false);
    expect(applyEvent(u, ev(1, S.STEP_NAME_PREFLIGHT, T.STEP_STATE_STARTED))).toBe(false);
    expect(planner.Upgrade.encode(u).finish()).toEqual(before);
    expect(u.progress[0]!.percent).toBeCloseTo(36, 0);
  });

  it("a commit report releases the slot; a failed one counts against the budget and pauses", () => {
    const u = upgrade();
    applyEvent(u, ev(4, S.STEP_NAME_REPORT, T.STEP_STATE_STARTED));
    expect(u.progress[0]!.runState).toBe(planner.NodeRunState.NODE_RUN_STATE_ACTIVE);
    applyEvent(u, ev(5, S.STEP_NAME_REPORT, T.STEP_STATE_SUCCEEDED));
    expect(u.progress[0]).toMatchObject({
      runState: planner.NodeRunState.NODE_RUN_STATE_SUCCEEDED,
      holdsSlot: false,
      version: "v1.34.5",
      percent: 100,
    });
    const v = upgrade();
    applyEvent(v, ev(7, S.STEP_NAME_REPORT, T.STEP_STATE_FAILED, { errorCode: "HEALTH_FAILED", message: "kubelet down" }));
    expect(v.phase).toBe(planner.UpgradePhase.UPGRADE_PHASE_RUNNING); // the event changes the node only
    decide(v, { now: new Date(), inventory: new Map(), cpSlots: new Set<string>() });
    expect(v.phase).toBe(planner.UpgradePhase.UPGRADE_PHASE_PAUSED);
    expect(v.failures).toBe(1);
    expect(v.message).toMatch(/budget exceeded.*n1 HEALTH_FAILED: kubelet down/);
  });

  it("grants no reboot outside the maintenance window", () => {
    const u = upgrade();
    u.spec!.strategy!.window = { daily: "01:00-02:00" };
    applyEvent(u, ev(1, S.STEP_NAME_REBOOT_GATE, T.STEP_STATE_STARTED));
    const world = (t: string) => ({ now: new Date(`2026-11-22T${t}:00Z`), inventory: new Map(), cpSlots: new Set<string>() });
    expect(decide(u, world("12:00")).rebootReady).toEqual([]);
    expect(u.progress[0]!.message).toMatch(/reboot held until the maintenance window 01:00-02:00/);
    expect(decide(u, world("01:30")).rebootReady).toEqual(["n1"]);
  });
});
