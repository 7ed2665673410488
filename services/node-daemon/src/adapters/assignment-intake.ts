// Where a signed assignment from NATS enters the daemon: it is verified against the planner
// keys of the keyring, for this node, unexpired, and not older than the newest accepted
// (term, issue time), kept in <data>/assignment-mark.json so a replay is refused after a
// restart too. A refused assignment is logged, counted and named in the heartbeat; the
// controller never sees it (the grant already held stays). A delete passes through: it is
// never a grant.
import { join } from "node:path";
import type { events } from "@ferry/proto";
import { acceptAssignment, AssignmentRefused, markAfter, markOf, type AssignmentMark, type AssignmentRefusal, type Keyring } from "@ferry/signing";
import { AtomicJsonFile, type Logger } from "@ferry/runtime";

export interface IntakeOptions {
  node: string;
  keyring: Keyring;
  dataDir: string;
  log: Logger;
  /** The controller's input: a verified assignment, or undefined (deleted or unreadable). */
  accept: (a: events.Assignment | undefined) => Promise<void>;
  refused?: (reason: AssignmentRefusal) => void;
  now?: () => Date;
}

export class AssignmentIntake {
  readonly #o: IntakeOptions;
  readonly #mark: AtomicJsonFile<AssignmentMark>;
  /** The file's content, read once (this is its only writer). */
  #seen: Promise<AssignmentMark | undefined> | undefined;
  #refusal = "";

  constructor(o: IntakeOptions) {
    this.#o = o;
    this.#mark = new AtomicJsonFile(join(o.dataDir, "assignment-mark.json"));
    if (o.keyring.planner.size === 0)
      o.log.warn('the keyring lists no planner key ("planner": [...]): every assignment will be refused (local installs still work)');
  }

  /** Why the last assignment was refused (empty: the last one was accepted). */
  get refusal(): string {
    return this.#refusal;
  }

  /** `s`: the key's value; undefined when deleted; an Error when it does not decode (refused as malformed). */
  async deliver(s: events.SignedAssignment | undefined | Error): Promise<void> {
    if (!s) return this.#o.accept(undefined);
    const seen = await (this.#seen ??= this.#mark.read());
    let a: events.Assignment;
    try {
      if (s instanceof Error) throw new AssignmentRefused("malformed", s.message);
      a = acceptAssignment(s, this.#o.keyring, { node: this.#o.node, now: this.#o.now?.() ?? new Date(), ...(seen ? { seen } : {}) });
    } catch (err) {
      if (!(err instanceof AssignmentRefused)) throw err;
      this.#refusal = `${err.reason}: ${err.message.slice(0, 512)}`;
      this.#o.refused?.(err.reason);
      this.#o.log.warn({ reason: err.reason, err: err.message.slice(0, 512) }, "refusing an assignment; keeping the grant already held");
      return;
    }
    this.#refusal = "";
    const mark = markOf(a);
    if (markAfter(mark, seen)) {
      await this.#mark.write(mark);
      this.#seen = Promise.resolve(mark);
    }
    await this.#o.accept(a);
  }
}
