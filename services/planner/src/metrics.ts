// The planner's Prometheus metrics (served at FERRY_METRICS_ADDR/metrics). Gauges are
// read from the state when scraped; counters and histograms are fed by the controller
// and WatchUpgrade. deploy/grafana/ferry.json charts these names.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { BUCKETS } from "@ferry/messaging";
import { events, planner } from "@ferry/proto";
import { REFUSAL_REASONS } from "./admission.ts";

export interface PlannerState {
  /** Every stored upgrade (headers: counters derived, no progress). */
  headers(): planner.Upgrade[];
  /** The active upgrades with their progress. */
  active(): planner.Upgrade[];
  isLeader(): boolean;
  /** Upgrades in KV the leader could not read whole. */
  broken(): number;
}

const phaseName = (p: planner.UpgradePhase) => planner.upgradePhaseToJSON(p).replace("UPGRADE_PHASE_", "").toLowerCase();
const stateName = (s: planner.NodeRunState) => planner.nodeRunStateToJSON(s).replace("NODE_RUN_STATE_", "").toLowerCase();

export class PlannerMetrics {
  readonly registry = new Registry();
  readonly eventsIngested: Counter;
  readonly eventLag: Histogram;
  readonly tickDuration: Histogram;
  readonly watchStreams: Gauge;
  readonly admissionRefused: Counter;
  readonly forged: Counter;
  readonly unreadable: Counter<"bucket">;

  constructor(state: PlannerState) {
    const registers = [this.registry];
    new Gauge({
      name: "ferry_planner_upgrades",
      help: "Upgrades in the rollout state, by phase",
      labelNames: ["phase"],
      registers,
      collect() {
        this.reset();
        for (const p of [1, 2, 3, 4, 5, 6] as planner.UpgradePhase[]) this.set({ phase: phaseName(p) }, 0);
        for (const h of state.headers()) this.inc({ phase: phaseName(h.phase) });
      },
    });
    new Gauge({
      name: "ferry_planner_nodes",
      help: "Nodes of active upgrades, by run state",
      labelNames: ["state"],
      registers,
      collect() {
        this.reset();
        for (const s of [1, 2, 3, 4, 5, 6] as planner.NodeRunState[]) this.set({ state: stateName(s) }, 0);
        for (const u of state.active()) for (const g of u.progress) this.inc({ state: stateName(g.runState) });
      },
    });
    new Gauge({
      name: "ferry_planner_reboot_slots_in_use",
      help: "Reboot-lock slots held by nodes of active upgrades, by role",
      labelNames: ["role"],
      registers,
      collect() {
        let cp = 0;
        let workers = 0;
        for (const u of state.active()) {
          const roles = new Map(u.plan.map((p) => [p.node, p.role]));
          for (const g of u.progress) if (g.holdsSlot) roles.get(g.node) === events.Role.ROLE_CONTROL_PLANE ? cp++ : workers++;
        }
        this.set({ role: "control-plane" }, cp);
        this.set({ role: "worker" }, workers);
      },
    });
    new Gauge({
      name: "ferry_planner_leader",
      help: "1 while this replica leads (holds the lease), else 0",
      registers,
      collect() {
        this.set(state.isLeader() ? 1 : 0);
      },
    });
    new Gauge({
      name: "ferry_planner_unreadable_upgrades",
      help: "Upgrades in KV the leader could not read whole when it started (not driven; see its log)",
      registers,
      collect() {
        this.set(state.broken());
      },
    });
    this.eventsIngested = new Counter({
      name: "ferry_planner_events_ingested_total",
      help: "Step events applied to an upgrade (duplicates not counted)",
      registers,
    });
    this.eventLag = new Histogram({
      name: "ferry_planner_event_lag_seconds",
      help: "From a step event's time on the board to its application by the leader",
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120],
      registers,
    });
    this.tickDuration = new Histogram({
      name: "ferry_planner_tick_duration_seconds",
      help: "Duration of the leader's ticks (decide, gates, persist, ack, assignments)",
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.watchStreams = new Gauge({ name: "ferry_planner_watch_streams", help: "WatchUpgrade streams open now", registers });
    this.admissionRefused = new Counter({
      name: "ferry_planner_admission_refused_total",
      help: `Join requests refused, by reason (${REFUSAL_REASONS.join(", ")})`,
      labelNames: ["reason"],
      registers,
    });
    this.forged = new Counter({
      name: "ferry_planner_forged_messages_total",
      help: "Heartbeats and step events whose payload names another node than their key or subject (refused)",
      labelNames: ["kind"],
      registers,
    });
    this.unreadable = new Counter({
      name: "ferry_planner_unreadable_records_total",
      help: "Records read from NATS that do not decode, by bucket (each skipped and logged with its key)",
      labelNames: ["bucket"],
      registers,
    });
    // Every series exists from the start (at 0), so rate() and alerts see the first refusal.
    for (const reason of REFUSAL_REASONS) this.admissionRefused.inc({ reason }, 0);
    for (const kind of ["event", "heartbeat"]) this.forged.inc({ kind }, 0);
    for (const bucket of [BUCKETS.planner, BUCKETS.nodes, BUCKETS.catalog]) this.unreadable.inc({ bucket }, 0);
    collectDefaultMetrics({ register: this.registry });
  }
}
