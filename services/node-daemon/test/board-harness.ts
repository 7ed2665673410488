// A daemon "process" on a simulated board for named scenarios: the real Runner and
// DaemonController on slot files with the real U-Boot tools, events captured in order.
// A fresh process() is a daemon restart; board.powerOn() is a power cycle.
import { execFileSync } from "node:child_process";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { pino } from "pino";
import { events } from "@ferry/proto";
import { AtomicJsonFile } from "@ferry/runtime";
import { createKeyring, generateKeyPair, loadSigningKey } from "@ferry/signing";
import { repoRoot } from "@ferry/testing";
import { DaemonController } from "../src/controller.ts";
import { osImage, SimBoard, type Behaviour } from "../src/sim/board.ts";
import type { Bootloader, Journal, NodeState, Platform } from "../src/steps/ports.ts";
import { Runner } from "../src/steps/runner.ts";
import { assignment, sha, signedRelease } from "./fixtures.ts";

export const tools = JSON.parse(
  execFileSync(join(repoRoot, "scripts/ensure-bootloader-tools.sh"), { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }),
);
const key = generateKeyPair();
export const signer = loadSigningKey(key.privatePem);
export const keyring = createKeyring([key.publicPem], 1);

/** An origin serving the given images at /<name>. */
export async function origin(files: Map<string, Buffer>): Promise<{ base: string; close: () => void }> {
  const s: Server = createServer((req, res) => {
    const body = files.get(req.url ?? "");
    if (!body) return void res.writeHead(404).end();
    res.writeHead(200, { "content-length": body.length }).end(body);
  });
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return {
    base: `http://127.0.0.1:${(s.address() as { port: number }).port}`,
    close: () => {
      s.closeAllConnections();
      s.close();
    },
  };
}

export interface Harness {
  board: SimBoard;
  state: AtomicJsonFile<NodeState>;
  journal: AtomicJsonFile<Journal>;
  emitted: events.StepEvent[];
  /** Bootloader writes by the daemon (the board's own power-ons are not counted). */
  envWrites: Array<Record<string, string>>;
  /** Makes the daemon's next bootloader writes fail when `when` matches. */
  failEnv: { when: (vars: Record<string, string>) => boolean; times: number };
  process(over?: Partial<Platform>): { runner: Runner; controller: DaemonController };
  /** An assignment for v1.34.6 of `behaviour` (gates closed unless given). */
  assignment(over?: Partial<events.Assignment>): events.Assignment;
  release: ReturnType<typeof signedRelease>;
  close(): void;
}

/** A simulated board on v1.33.5 (slot A, committed) and its daemon's files on a data partition under `dir`. */
export async function committedBoard(dir: string, imageBytes: number) {
  const board = await SimBoard.create(join(dir, "board"), tools, osImage("v1.33.5", "healthy", imageBytes));
  const state = new AtomicJsonFile<NodeState>(join(dir, "data", "state.json"));
  await state.write({
    committedVersion: "v1.33.5",
    committedSlot: "A",
    slots: { A: { version: "v1.33.5", state: "good", rawSha256: "" } },
    highWater: undefined,
    lastResult: undefined,
  });
  return { board, state, journal: new AtomicJsonFile<Journal>(join(dir, "data", "journal.json")) };
}

export async function harness(dir: string, behaviour: Behaviour = "healthy"): Promise<Harness> {
  const { board, state, journal } = await committedBoard(dir, 64 * 1024);
  const release = signedRelease([signer], "v1.34.6", behaviour, { size: 1024 * 1024 });
  // Served as the site distributor serves it: /blobs/sha256/<digest of the compressed image>.
  const o = await origin(new Map([[`/blobs/sha256/${sha(release.zst)}`, release.zst]]));
  const emitted: events.StepEvent[] = [];
  const envWrites: Array<Record<string, string>> = [];
  const failEnv = { when: (_v: Record<string, string>) => false, times: 0 };
  const bootloader: Bootloader = {
    kind: "uboot",
    read: () => board.bootloader.read(),
    write: async (vars) => {
      if (failEnv.times > 0 && failEnv.when(vars)) {
        failEnv.times -= 1;
        throw new Error("fw_setenv failed: No space left on device");
      }
      envWrites.push(vars);
      await board.bootloader.write(vars);
    },
  };
  const h: Harness = {
    board,
    state,
    journal,
    emitted,
    envWrites,
    failEnv,
    release,
    process(over = {}) {
      let controller: DaemonController | undefined;
      const emit = async (e: Omit<events.StepEvent, "seq" | "time" | "node">) =>
        void emitted.push({ ...e, node: "n1", seq: emitted.length + 1, time: new Date() });
      const runner = new Runner({
        platform: { ...board.platform(), bootloader, ...over },
        keyring,
        board: "ls1046a",
        state,
        journal,
        emit,
        gates: { latest: (u, hop) => controller?.gates.latest(u, hop) },
        pollMs: 20,
      });
      controller = new DaemonController({
        runner,
        journal,
        state,
        dataDir: join(dir, "data"),
        emit,
        board: "ls1046a",
        log: pino({ level: "silent" }),
      });
      return { runner, controller };
    },
    assignment: (over = {}) =>
      assignment({
        upgradeId: "up-1",
        envelope: release.envelope,
        blobDigest: sha(release.zst),
        distributorUrls: [o.base],
        originFallback: false,
        rebootAllowed: false,
        commitAllowed: false,
        ...over,
      }),
    close: o.close,
  };
  return h;
}

export const last = (h: Harness) => h.emitted.at(-1)!;
export const stepsOf = (h: Harness) =>
  h.emitted.map((e) => `${events.stepNameToJSON(e.step).replace("STEP_NAME_", "")}:${events.stepStateToJSON(e.state).replace("STEP_STATE_", "")}`);
