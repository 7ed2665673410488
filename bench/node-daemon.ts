// npm run bench:node-daemon [-- --raw-mib 1024 --runs 3]
// Installs a zstd image (raw size --raw-mib) from a local HTTP server into a slot file
// with the node-daemon's one-pass writer, side by side in the same run with the shell
// pipeline `curl -s URL | zstd -dc | tee >(sha256sum) > slot && sync`, alternating runs;
// both are timed until the data is on disk. The daemon's read-back verify is reported
// separately, with its peak RSS. Ends with one JSON line.
import { execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const root = join(import.meta.dirname, "..");
const { values: args } = parseArgs({ options: { "raw-mib": { type: "string", default: "1024" }, runs: { type: "string", default: "3" } } });
const RAW = Number(args["raw-mib"]) * 1024 * 1024;
const RUNS = Number(args.runs);
const work = mkdtempSync(join(tmpdir(), "ferry-bench-nd-"));
process.on("exit", () => rmSync(work, { recursive: true, force: true }));
const log = (s: string) => process.stderr.write(`${s}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

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

async function main() {
  // An image that compresses like a root filesystem: half random, half repetitive.
  const rawFile = join(work, "rootfs.img");
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
  const spec = {
    format: 3,
    compressedSize: Number(execFileSync("stat", ["-c", "%s", zst], { encoding: "utf8" })),
    compressedSha256,
    rawSize: RAW,
    rawSha256: rawHash.digest("hex"),
  };
  log(`bench:node-daemon: ${RAW / 2 ** 20} MiB raw, ${(spec.compressedSize / 2 ** 20).toFixed(0)} MiB zstd, ${RUNS} runs each`);

  const origin = spawn(process.execPath, [join(root, "bench/lib/origin.ts"), zst, compressedSha256, String(1e12), "0"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const ports = await new Promise<{ origin: number }>((resolve) =>
    origin.stdout.once("data", (d: Buffer) => resolve(JSON.parse(d.toString()) as { origin: number })),
  );
  const url = `http://127.0.0.1:${ports.origin}/blobs/sha256/${compressedSha256}`;
  const slot = join(work, "slot-b");
  const active = join(work, "slot-a");

  const daemon: Array<{ writeMs: number; verifyMs: number; peakRssMb: number }> = [];
  const shell: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    rmSync(slot, { force: true });
    daemon.push(
      JSON.parse(await run(process.execPath, [join(root, "bench/lib/write-slot.ts"), url, slot, active, JSON.stringify(spec)])) as (typeof daemon)[0],
    );
    rmSync(slot, { force: true });
    const t0 = performance.now();
    await run("bash", ["-c", `curl -s '${url}' | zstd -dc | tee >(sha256sum > '${work}/sum') > '${slot}' && sync`]);
    shell.push(performance.now() - t0);
    log(
      `  run ${i + 1}: daemon ${(daemon[i]!.writeMs / 1000).toFixed(2)} s (verify ${(daemon[i]!.verifyMs / 1000).toFixed(2)} s, RSS ${daemon[i]!.peakRssMb} MB), pipeline ${(shell[i]! / 1000).toFixed(2)} s`,
    );
  }
  origin.kill();
  const mib = RAW / 2 ** 20;
  const d = median(daemon.map((x) => x.writeMs)) / 1000;
  const s = median(shell) / 1000;
  const v = median(daemon.map((x) => x.verifyMs)) / 1000;
  const rss = Math.max(...daemon.map((x) => x.peakRssMb));
  process.stdout.write(
    [
      `\n${mib} MiB raw image (zstd), medians of ${RUNS}`,
      `  node-daemon write (download+decompress+hash+write+fsync)  ${d.toFixed(2)} s  ${(mib / d).toFixed(0)} MiB/s`,
      `  curl | zstd -dc | tee >(sha256sum) > slot && sync         ${s.toFixed(2)} s  ${(mib / s).toFixed(0)} MiB/s`,
      `  throughput ratio daemon/pipeline                           ${(s / d).toFixed(2)}x`,
      `  node-daemon read-back verify                               ${v.toFixed(2)} s  ${(mib / v).toFixed(0)} MiB/s`,
      `  node-daemon peak RSS                                       ${rss} MB`,
      "",
    ].join("\n"),
  );
  process.stdout.write(
    `${JSON.stringify({ rawMiB: mib, runs: RUNS, daemonWriteS: d, pipelineS: s, throughputRatio: s / d, readBackVerifyS: v, peakRssMb: rss })}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:node-daemon failed: ${(err as Error).stack}\n`);
  process.exit(1);
});
