// npm run bench:node-daemon [-- --raw-mib 1024 --runs 3]
// The real node-daemon process, started as a board starts it (bin/ferry-service:
// the compiled JavaScript and its runtime settings), with a real nats-server, on a
// simulated board (slot files, the real U-Boot tools): a manual Install over its
// NodeService of a signed zstd image (raw size --raw-mib) served by a local HTTP server.
// Side by side in the same run, alternating, the shell pipeline
// `curl -s URL | zstd -dc | tee >(sha256sum) > slot && sync`. Both are timed until the
// data is on disk: for the daemon, from its write-slot step's start to its fsync step's
// end (its own step events); its read-back verify is reported separately. Peak RSS is the
// daemon process's VmHWM once the install reaches the reboot (the kernel's high-water
// mark: nothing between samples is missed). Ends with one JSON line.
import { execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { events, node as nodepb } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { encodeManifest, MANIFEST_TYPE } from "@ferry/release";
import { formatKeyringJson, generateKeyPair, loadSigningKey, signEnvelope } from "@ferry/signing";
import { freePort, NatsServer, repoRoot, tempDir, waitFor } from "@ferry/testing";
import { osImage, SimBoard } from "@ferry/node-daemon/sim/board";

const { values: args } = parseArgs({ options: { "raw-mib": { type: "string", default: "1024" }, runs: { type: "string", default: "3" } } });
const RAW = Number(args["raw-mib"]) * 1024 * 1024;
const RUNS = Number(args.runs);
const work = tempDir("ferry-bench-nd-");
process.on("exit", () => work[Symbol.dispose]());
const log = (s: string) => process.stderr.write(`${s}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const { StepName, StepState } = events;

async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const c of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(c as Buffer);
  return h.digest("hex");
}

function run(cmd: string, argv: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, argv, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited ${code}`))));
  });
}

const hwmMiB = (pid: number) => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;

interface DaemonRun {
  writeMs: number;
  verifyMs: number;
  peakRssMiB: number;
  idleRssMiB: number;
}

async function main() {
  // An image that compresses like a root filesystem: half random, half repetitive.
  const rawFile = join(work.path, "rootfs.img");
  const out = createWriteStream(rawFile);
  const rawHash = createHash("sha256");
  for (let n = 0; n < RAW; n += 1 << 20) {
    const b = Buffer.concat([randomBytes(1 << 19), Buffer.alloc(1 << 19, `ferry ${n} `)]);
    rawHash.update(b);
    if (!out.write(b)) await new Promise<void>((r) => out.once("drain", () => r()));
  }
  await new Promise<void>((r) => out.end(() => r()));
  execFileSync("zstd", ["-q", "-3", "-T0", "-f", rawFile, "-o", `${rawFile}.zst`]);
  rmSync(rawFile);
  const zst = `${rawFile}.zst`;
  const compressedSha256 = await sha256File(zst);
  const compressedSize = statSync(zst).size;
  log(`bench:node-daemon: ${RAW / 2 ** 20} MiB raw, ${(compressedSize / 2 ** 20).toFixed(0)} MiB zstd, ${RUNS} runs each`);

  const origin = spawn(process.execPath, [join(repoRoot, "bench/lib/origin.ts"), zst, compressedSha256, String(1e12), "0"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  process.on("exit", () => origin.kill()); // also when the bench fails
  const ports = await new Promise<{ origin: number }>((resolve) =>
    origin.stdout.once("data", (d: Buffer) => resolve(JSON.parse(d.toString()) as { origin: number })),
  );
  const url = `http://127.0.0.1:${ports.origin}/blobs/sha256/${compressedSha256}`;

  // The release, signed as the release engineer would sign it.
  const key = generateKeyPair();
  const keyring = join(work.path, "keyring.json");
  writeFileSync(keyring, formatKeyringJson([key.publicPem], 1));
  const manifest: events.ReleaseManifest = {
    type: MANIFEST_TYPE,
    version: "v1.34.0",
    images: [
      {
        board: "bench",
        arch: "arm64",
        url,
        format: events.Compression.COMPRESSION_ZSTD,
        compressedSize,
        compressedSha256,
        rawSize: RAW,
        rawSha256: rawHash.digest("hex"),
      },
    ],
    allowedFrom: [],
    notes: "",
    expires: undefined,
    issuedAt: undefined,
  };
  const envelope = signEnvelope(encodeManifest(manifest), [loadSigningKey(key.privatePem)]);
  const tools = JSON.parse(
    execFileSync(join(repoRoot, "scripts/ensure-bootloader-tools.sh"), { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }),
  ) as { fwPrintenv: string; fwSetenv: string; ldLibraryPath: string };
  await using nats = await NatsServer.start();

  async function daemonInstall(i: number): Promise<DaemonRun> {
    const dir = join(work.path, `board-${i}`);
    mkdirSync(dir, { recursive: true });
    const board = await SimBoard.create(join(dir, "board"), tools, osImage("v1.33.5", "healthy", 64 * 1024));
    const port = await freePort();
    const daemon = spawn(join(repoRoot, "bin/ferry-service"), ["node-daemon"], {
      stdio: ["ignore", "ignore", "inherit"],
      env: {
        ...process.env,
        FERRY_NODE: process.execPath,
        FERRY_NODE_NAME: `bench-${i}`,
        FERRY_BOARD: "bench",
        FERRY_DATA_DIR: join(dir, "data"),
        FERRY_NATS_URL: nats.url,
        FERRY_GRPC_ADDR: `127.0.0.1:${port}`,
        FERRY_KEYRING_FILE: keyring,
        FERRY_SLOT_A: board.slotPath("A"),
        FERRY_SLOT_B: board.slotPath("B"),
        FERRY_SLOT_KIND: "file",
        FERRY_BOOT_STATE_FILE: join(dir, "board", "run", "boot-state.env"),
        FERRY_BOOT_ID_FILE: join(dir, "board", "run", "boot-id"),
        FERRY_UBOOT_CONFIG: join(dir, "board", "fw_env.config"),
        FERRY_UBOOT_DEFAULT_ENV: join(dir, "board", "default.env"),
        FERRY_FW_PRINTENV: tools.fwPrintenv,
        FERRY_FW_SETENV: tools.fwSetenv,
        FERRY_TOOL_LD_LIBRARY_PATH: tools.ldLibraryPath,
        FERRY_OS_VERSION: "v1.33.5",
        FERRY_REBOOT_CMD: "true", // the bench stops at the reboot
      },
    });
    const exited = new Promise<void>((r) => daemon.once("exit", () => r()));
    // The board's own credential appears at start (<data>/grpc.token).
    await waitFor(() => existsSync(join(dir, "data", "grpc.token")), { timeoutMs: 30_000 });
    const client = createClient(nodepb.NodeServiceService, `127.0.0.1:${port}`, {
      token: readFileSync(join(dir, "data", "grpc.token"), "utf8").trim(),
    });
    try {
      await waitFor(
        () =>
          client.getStatus({}).then(
            () => true,
            () => false,
          ),
        { timeoutMs: 20_000, what: "the daemon's NodeService" },
      );
      const idleRssMiB = hwmMiB(daemon.pid!);
      const at = new Map<string, number>();
      const ac = new AbortController();
      const watched = (async () => {
        for await (const e of client.watchEvents({ afterSeq: 0 }, { signal: ac.signal })) {
          if (e.state === StepState.STEP_STATE_FAILED) throw new Error(`the daemon failed step ${e.step}: ${e.message}`);
          if (e.state === StepState.STEP_STATE_STARTED || e.state === StepState.STEP_STATE_SUCCEEDED)
            at.set(`${e.step}:${e.state}`, performance.now());
          if (e.step === StepName.STEP_NAME_REBOOT && e.state === StepState.STEP_STATE_SUCCEEDED) return;
        }
      })();
      await client.install({ envelope, url, holdCommit: false, healthTimeoutSeconds: 0 });
      await watched;
      ac.abort();
      const peakRssMiB = hwmMiB(daemon.pid!);
      const t = (step: events.StepName, state: events.StepState) => at.get(`${step}:${state}`)!;
      return {
        writeMs: t(StepName.STEP_NAME_FSYNC, StepState.STEP_STATE_SUCCEEDED) - t(StepName.STEP_NAME_WRITE_SLOT, StepState.STEP_STATE_STARTED),
        verifyMs:
          t(StepName.STEP_NAME_READBACK_VERIFY, StepState.STEP_STATE_SUCCEEDED) - t(StepName.STEP_NAME_READBACK_VERIFY, StepState.STEP_STATE_STARTED),
        peakRssMiB,
        idleRssMiB,
      };
    } finally {
      client.close();
      daemon.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    }
  }

  const daemon: DaemonRun[] = [];
  const shell: number[] = [];
  const slot = join(work.path, "slot-shell");
  for (let i = 0; i < RUNS; i++) {
    daemon.push(await daemonInstall(i));
    rmSync(slot, { force: true });
    const t0 = performance.now();
    await run("bash", ["-c", `curl -s '${url}' | zstd -dc | tee >(sha256sum > '${work.path}/sum') > '${slot}' && sync`]);
    shell.push(performance.now() - t0);
    rmSync(slot, { force: true });
    const d = daemon[i]!;
    log(
      `  run ${i + 1}: daemon ${(d.writeMs / 1000).toFixed(2)} s (verify ${(d.verifyMs / 1000).toFixed(2)} s, peak RSS ${d.peakRssMiB.toFixed(1)} MiB, ${d.idleRssMiB.toFixed(1)} MiB before the install), pipeline ${(shell[i]! / 1000).toFixed(2)} s`,
    );
  }
  origin.kill();
  const mib = RAW / 2 ** 20;
  const d = median(daemon.map((x) => x.writeMs)) / 1000;
  const s = median(shell) / 1000;
  const v = median(daemon.map((x) => x.verifyMs)) / 1000;
  const rss = Math.max(...daemon.map((x) => x.peakRssMiB));
  const idle = Math.max(...daemon.map((x) => x.idleRssMiB));
  process.stdout.write(
    [
      `\n${mib} MiB raw image (zstd), medians of ${RUNS}`,
      `  node-daemon write (download+decompress+hash+write+fsync)  ${d.toFixed(2)} s  ${(mib / d).toFixed(0)} MiB/s`,
      `  curl | zstd -dc | tee >(sha256sum) > slot && sync         ${s.toFixed(2)} s  ${(mib / s).toFixed(0)} MiB/s`,
      `  throughput ratio daemon/pipeline                           ${(s / d).toFixed(2)}x`,
      `  node-daemon read-back verify                               ${v.toFixed(2)} s  ${(mib / v).toFixed(0)} MiB/s`,
      `  node-daemon peak RSS (VmHWM, max over runs)                ${rss.toFixed(1)} MiB (${idle.toFixed(1)} MiB before the install)`,
      "",
    ].join("\n"),
  );
  process.stdout.write(
    `${JSON.stringify({ rawMiB: mib, runs: RUNS, daemonWriteS: d, pipelineS: s, throughputRatio: s / d, readBackVerifyS: v, peakRssMiB: rss, idleRssMiB: idle })}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:node-daemon failed: ${(err as Error).stack}\n`);
  process.exit(1);
});
