// The daemon's step durations and outcomes as a node_exporter textfile (Prometheus text
// format, collected with --collector.textfile.directory): by default
// <FERRY_DATA_DIR>/metrics/ferry-node-daemon.prom, on the data partition, so the history
// survives a slot switch. Rewritten atomically (temp file + rename) after each step ends
// and each refused assignment.
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { events } from "@ferry/proto";
import { writeFileAtomic, type Logger } from "@ferry/runtime";
import { ASSIGNMENT_REFUSALS, type AssignmentRefusal } from "@ferry/signing";

const { StepState: T } = events;
const OUTCOME: Partial<Record<events.StepState, string>> = {
  [T.STEP_STATE_SUCCEEDED]: "succeeded",
  [T.STEP_STATE_FAILED]: "failed",
  [T.STEP_STATE_SKIPPED]: "skipped",
};

const stepLabel = (s: events.StepName) => events.stepNameToJSON(s).replace("STEP_NAME_", "").toLowerCase();

export class StepMetrics {
  readonly file: string;
  readonly #log: Logger;
  readonly #node: string;
  /** When each step last started (event time). */
  readonly #started = new Map<events.StepName, number>();
  readonly #outcomes = new Map<string, number>(); // "step outcome" → count
  readonly #durations = new Map<string, { sum: number; count: number; last: number }>(); // step → seconds
  readonly #refused = new Map<AssignmentRefusal, number>(ASSIGNMENT_REFUSALS.map((r) => [r, 0]));
  #lastEnd = 0;
  #writing: Promise<void> = Promise.resolve();
  #dirty = false;

  constructor(file: string, node: string, log: Logger) {
    this.file = file;
    this.#node = node;
    this.#log = log;
    this.#flush();
  }

  /** Records one step event (the outbox's, as it is appended). */
  observe(e: events.StepEvent): void {
    const at = (e.time ?? new Date()).getTime();
    if (e.state === T.STEP_STATE_STARTED) {
      this.#started.set(e.step, at);
      return;
    }
    const outcome = OUTCOME[e.state];
    if (!outcome) return;
    const step = stepLabel(e.step);
    const key = `${step} ${outcome}`;
    this.#outcomes.set(key, (this.#outcomes.get(key) ?? 0) + 1);
    const began = this.#started.get(e.step);
    if (began !== undefined && at >= began) {
      const d = this.#durations.get(step) ?? { sum: 0, count: 0, last: 0 };
      const s = (at - began) / 1000;
      this.#durations.set(step, { sum: d.sum + s, count: d.count + 1, last: s });
      this.#started.delete(e.step);
    }
    this.#lastEnd = at;
    this.#flush();
  }

  /** Counts an assignment the daemon refused (signature, node, expiry, term). */
  refused(reason: AssignmentRefusal): void {
    this.#refused.set(reason, (this.#refused.get(reason) ?? 0) + 1);
    this.#flush();
  }

  render(): string {
    const node = this.#node.replace(/["\\\n]/g, "_");
    const out = [
      "# HELP ferry_node_steps_total Install steps ended on this node, by step and outcome",
      "# TYPE ferry_node_steps_total counter",
      ...[...this.#outcomes].map(([k, n]) => {
        const [step, outcome] = k.split(" ");
        return `ferry_node_steps_total{node="${node}",step="${step}",outcome="${outcome}"} ${n}`;
      }),
      "# HELP ferry_node_step_duration_seconds How long install steps took on this node, by step",
      "# TYPE ferry_node_step_duration_seconds summary",
      ...[...this.#durations].flatMap(([step, d]) => [
        `ferry_node_step_duration_seconds_sum{node="${node}",step="${step}"} ${d.sum}`,
        `ferry_node_step_duration_seconds_count{node="${node}",step="${step}"} ${d.count}`,
      ]),
      "# HELP ferry_node_step_last_duration_seconds The duration of each step's last run on this node",
      "# TYPE ferry_node_step_last_duration_seconds gauge",
      ...[...this.#durations].map(([step, d]) => `ferry_node_step_last_duration_seconds{node="${node}",step="${step}"} ${d.last}`),
      "# HELP ferry_node_step_last_end_timestamp_seconds When the last step ended on this node",
      "# TYPE ferry_node_step_last_end_timestamp_seconds gauge",
      `ferry_node_step_last_end_timestamp_seconds{node="${node}"} ${this.#lastEnd / 1000}`,
      "# HELP ferry_node_assignments_refused_total Assignments this node refused, by reason (unsigned, unknown key, bad signature, other node, expired, older term, replayed)",
      "# TYPE ferry_node_assignments_refused_total counter",
      ...[...this.#refused].map(([reason, n]) => `ferry_node_assignments_refused_total{node="${node}",reason="${reason}"} ${n}`),
    ];
    return `${out.join("\n")}\n`;
  }

  /** Writes the file once now and after each step; one write at a time, the newest content last. */
  #flush(): void {
    if (this.#dirty) return;
    this.#dirty = true;
    this.#writing = this.#writing.then(async () => {
      this.#dirty = false;
      try {
        mkdirSync(dirname(this.file), { recursive: true });
        await writeFileAtomic(this.file, this.render());
      } catch (err) {
        this.#log.warn({ file: this.file, err: (err as Error).message }, "writing the metrics textfile failed");
      }
    });
  }

  /** Resolves once every write asked for so far is done. */
  async flushed(): Promise<void> {
    await this.#writing;
  }
}
