// ferry nodes / upgrade / cache / bundle: the daily work against the planner and the
// site distributor (the catalog commands live in main.ts).
import { createReadStream, createWriteStream, statSync } from "node:fs";
import { createHash } from "node:crypto";
import type { Command } from "commander";
import { distributor, events, planner } from "@ferry/proto";
import { parseManifest } from "@ferry/release";
import { CliError, envelopeJson, humanBytes, readEnvelope, table } from "../io.ts";
import { endTar, readTar, writeEntry } from "../tar.ts";
import { listAdmissions, registerAdmissionCommands } from "./admission.ts";
import { using, type Ctx } from "./clients.ts";

export type { Ctx };

const lower = (s: string, prefix: string) => s.replace(prefix, "").toLowerCase().replace(/_/g, "-");
const phase = (p: planner.UpgradePhase) => lower(planner.upgradePhaseToJSON(p), "UPGRADE_PHASE_");
const runState = (r: planner.NodeRunState) => lower(planner.nodeRunStateToJSON(r), "NODE_RUN_STATE_");
const stepName = (s: events.StepName) => lower(events.stepNameToJSON(s), "STEP_NAME_");
const role = (r: events.Role) => (r === events.Role.ROLE_CONTROL_PLANE ? "control-plane" : "worker");
const ago = (d: Date | undefined) => (d ? `${Math.max(0, Math.round((Date.now() - d.getTime()) / 1000))}s ago` : "never");

interface SpecOpts {
  selector: string;
  maxUnavailable: number;
  canary: number;
  failureBudget: number;
  healthTimeout: number;
  window: string;
}

function addSpecOptions(c: Command, ctx: Ctx): Command {
  return c
    .argument("<target>", "exact version (v1.35.1), minor (v1.35) or alias (stable)")
    .option("-l, --selector <selector>", 'node label selector, e.g. "ferry.dev/role=worker,site=berlin"', "")
    .option("--max-unavailable <n>", "workers rebooting at once", ctx.int("--max-unavailable"), 1)
    .option("--canary <n>", "first N nodes go first, then wait for `ferry upgrade approve`", ctx.int("--canary"), 0)
    .option("--failure-budget <n>", "failed nodes tolerated before the rollout pauses", ctx.int("--failure-budget"), 0)
    .option("--health-timeout <seconds>", "how long a trial boot may wait for health and commit", ctx.int("--health-timeout"), 600)
    .option("--window <HH:MM-HH:MM>", "daily UTC maintenance window for reboots", "");
}

const toSpec = (target: string, o: SpecOpts): planner.UpgradeSpec => ({
  target,
  selector: o.selector,
  strategy: {
    maxUnavailable: o.maxUnavailable,
    canary: o.canary,
    failureBudget: o.failureBudget,
    healthTimeoutSeconds: o.healthTimeout,
    window: o.window ? { daily: o.window } : undefined,
  },
});

function upgradeText(u: planner.Upgrade): string {
  const head = `upgrade ${u.id}: ${phase(u.phase)} → ${u.targetVersion}  ${u.nodesDone}/${u.nodesTotal} nodes  ${u.percent.toFixed(0)}%${u.failures ? `  ${u.failures} failed` : ""}\n  ${u.message}\n`;
  const st = u.staging?.message ? `  staging: ${u.staging.message}\n` : "";
  if (u.progress.length === 0) return head + st;
  const plans = new Map(u.plan.map((p) => [p.node, p]));
  const rows = [["NODE", "ROLE", "STATE", "HOP", "VERSION", "STEP", "PROGRESS", "MESSAGE"]];
  for (const g of u.progress)
    rows.push([
      g.node,
      role(plans.get(g.node)?.role ?? events.Role.ROLE_WORKER),
      (g.unreachable ? "UNREACHABLE" : runState(g.runState)) + (g.canary ? " (canary)" : ""),
      `${Math.min(g.hopIndex + 1, g.hopCount)}/${g.hopCount}`,
      g.version,
      stepName(g.step),
      `${g.percent.toFixed(0)}%`,
      g.message,
    ]);
  const held = u.plan.filter((p) => p.heldBackCode).map((p) => `  held back: ${p.node}: ${p.heldBackReason}\n`);
  return head + st + table(rows) + held.join("");
}

export function registerFleetCommands(program: Command, ctx: Ctx): void {
  // ---- nodes ----
  const nodes = program.command("nodes").alias("node").description("the node inventory (from the boards' heartbeats)");
  nodes
    .command("ls")
    .description("list nodes with version, slot, role, state and last heartbeat")
    .option("-l, --selector <selector>", "label selector", "")
    .option("--pending", "boards that asked to join and wait to be admitted (ferry nodes admit)")
    .option("--admissions", "every board's admission record (pending, admitted, revoked)")
    .action(async (o: { selector: string; pending?: boolean; admissions?: boolean }) => {
      if (o.pending || o.admissions)
        return listAdmissions(ctx, o.pending ? planner.AdmissionState.ADMISSION_STATE_PENDING : planner.AdmissionState.ADMISSION_STATE_UNSPECIFIED);
      const r = await using(ctx, "planner", (c) => c.listNodes({ selector: o.selector }));
      ctx.print(planner.ListNodesResponse.toJSON(r), () =>
        table([
          ["NAME", "ROLE", "BOARD", "VERSION", "SLOT", "STATE", "ONLINE", "LAST SEEN", "UPGRADE"],
          ...r.nodes.map((n) => [
            n.status!.name,
            role(n.status!.role),
            n.status!.board,
            n.status!.currentVersion,
            lower(events.slotToJSON(n.status!.bootedSlot), "SLOT_"),
            lower(events.nodeStateToJSON(n.status!.state), "NODE_STATE_"),
            n.online ? "yes" : "NO",
            ago(n.lastSeen),
            n.claimedBy || "-",
          ]),
        ]),
      );
    });
  nodes
    .command("get")
    .argument("<name>")
    .description("one node's full status")
    .action(async (name: string) => {
      const n = await using(ctx, "planner", (c) => c.getNode({ name }));
      ctx.print(planner.Node.toJSON(n), () => `${JSON.stringify(planner.Node.toJSON(n), null, 2)}\n`);
    });

  nodes
    .command("forget")
    .argument("<name>")
    .description("forget a decommissioned node: its heartbeat leaves the inventory (refused while an upgrade claims it)")
    .option("--reason <text>", "why (logged by the planner)", "")
    .action(async (name: string, o: { reason: string }) => {
      await using(ctx, "planner", (c) => c.forgetNode({ name, reason: o.reason }));
      ctx.print({ forgotten: name }, () => `forgot node ${name}\n`);
    });

  registerAdmissionCommands(nodes, program, ctx);

  // ---- upgrade ----
  const up = program
    .command("upgrade")
    .alias("upgrades")
    .description("fleet rollouts: preview, create, watch, pause, resume, cancel, approve, release-node");
  addSpecOptions(up.command("preview").description("dry run: each node's hops, bytes, reboots, the waves, and who is held back and why"), ctx).action(
    async (target: string, o: SpecOpts) => {
      const r = await using(ctx, "planner", (c) => c.previewUpgrade({ spec: toSpec(target, o) }));
      ctx.print(planner.PreviewUpgradeResponse.toJSON(r), () => {
        const rows = [["NODE", "ROLE", "FROM", "HOPS", "DOWNLOAD", "WAVE", "HELD BACK"]];
        for (const n of r.nodes)
          rows.push([
            n.node,
            role(n.role),
            n.fromVersion,
            n.hops.join(" → ") || "-",
            humanBytes(n.downloadBytes),
            n.wave ? String(n.wave) : "-",
            n.heldBackReason || "",
          ]);
        const waves = r.waves
          .map((w) => `  wave ${w.index}: ${w.version} ${role(w.role)}${w.canary ? " (canary)" : ""}: ${w.nodes.join(", ")}\n`)
          .join("");
        return `target ${r.targetVersion}: ${r.nodes.filter((n) => !n.heldBackCode).length} of ${r.nodes.length} nodes, ${r.reboots} reboots, ${humanBytes(r.downloadBytes)} to boards, ${r.images} image(s) (${humanBytes(r.imageBytes)}) to stage\n${table(rows)}${waves}`;
      });
    },
  );
  addSpecOptions(up.command("create").description("start a rollout"), ctx)
    .option("--id <id>", "upgrade id (default: generated); creating it again with the same spec is a no-op")
    .option("--watch", "then watch it until it ends")
    .action(async (target: string, o: SpecOpts & { id?: string; watch?: boolean }) => {
      const u = await using(ctx, "planner", (c) => c.createUpgrade({ spec: toSpec(target, o), id: o.id ?? "" }));
      ctx.print(planner.Upgrade.toJSON(u), () => `created upgrade ${u.id} → ${u.targetVersion} for ${u.progress.length} node(s)\n`);
      if (o.watch) await watch(ctx, u.id, 0);
    });
  up.command("ls")
    .description("list upgrades")
    .action(async () => {
      const r = await using(ctx, "planner", (c) => c.listUpgrades({}));
      ctx.print(planner.ListUpgradesResponse.toJSON(r), () =>
        table([
          ["ID", "PHASE", "TARGET", "NODES", "PROGRESS", "CREATED", "MESSAGE"],
          ...r.upgrades.map((u) => [
            u.id,
            phase(u.phase),
            u.targetVersion,
            `${u.nodesDone}/${u.nodesTotal}`,
            `${u.percent.toFixed(0)}%`,
            u.createdAt?.toISOString() ?? "",
            u.message,
          ]),
        ]),
      );
    });
  up.command("get")
    .argument("<id>")
    .description("an upgrade with every node's progress")
    .action(async (id: string) => {
      const u = await using(ctx, "planner", (c) => c.getUpgrade({ id }));
      ctx.print(planner.Upgrade.toJSON(u), () => upgradeText(u));
    });
  up.command("watch")
    .argument("<id>")
    .description("follow an upgrade live: a progress bar per node (plain lines when not a terminal)")
    .option("--from-seq <n>", "replay events from this stream sequence", ctx.int("--from-seq"), 0)
    .action(async (id: string, o: { fromSeq: number }) => watch(ctx, id, o.fromSeq));
  for (const [name, desc] of [
    ["pause", "stop granting new reboots and starting nodes (nodes past their reboot finish their hop)"],
    ["resume", "continue a paused upgrade"],
    ["cancel", "stop the upgrade: nodes not yet rebooted stop, the others finish their hop"],
    ["approve", "let the rollout continue past its canary"],
  ] as const) {
    up.command(name)
      .argument("<id>")
      .option("--reason <text>", "why (recorded in the upgrade's message)", "")
      .description(desc)
      .action(async (id: string, o: { reason: string }) => {
        const ref = { id, reason: o.reason };
        const u = await using(ctx, "planner", (c) =>
          name === "pause"
            ? c.pauseUpgrade(ref)
            : name === "resume"
              ? c.resumeUpgrade(ref)
              : name === "cancel"
                ? c.cancelUpgrade(ref)
                : c.approveUpgrade(ref),
        );
        ctx.print(planner.Upgrade.toJSON(u), () => `upgrade ${u.id}: ${phase(u.phase)}: ${u.message}\n`);
      });
  }

  up.command("release-node")
    .argument("<id>")
    .argument("<node>")
    .description("free the reboot-lock slot of a node that died holding it (its part ends failed, RELEASED)")
    .option("--reason <text>", "why (recorded on the node)", "")
    .option("--force", "also for a control-plane node past its reboot gate (it may be mid-trial: check the board first)")
    .action(async (id: string, node: string, o: { reason: string; force?: boolean }) => {
      const u = await using(ctx, "planner", (c) => c.releaseNode({ id, node, reason: o.reason, force: o.force === true }));
      ctx.print(planner.Upgrade.toJSON(u), () => `upgrade ${u.id}: released ${node}; ${phase(u.phase)}: ${u.message}\n`);
    });

  // ---- cache ----
  const cache = program.command("cache").description("the site image-distributor's cache");
  cache
    .command("ls")
    .description("cached blobs with size, pins and last access, and the cache's stats")
    .action(async () => {
      const [r, s] = await using(ctx, "distributor", async (c) => [await c.listBlobs({}), await c.getStats({})] as const);
      ctx.print(
        { blobs: distributor.ListBlobsResponse.toJSON(r), stats: distributor.Stats.toJSON(s) },
        () =>
          table([
            ["DIGEST", "SIZE", "CACHED", "PINNED BY", "LAST ACCESS"],
            ...r.blobs.map((b) => [
              b.digest,
              humanBytes(b.size),
              b.cached ? "yes" : `${humanBytes(b.bytesCached)}`,
              b.pinnedBy.join(",") || "-",
              b.lastAccess?.toISOString() ?? "-",
            ]),
          ]) +
          `cache ${humanBytes(s.cacheBytes)} of ${humanBytes(s.cacheBudgetBytes)}, ${s.hits} hits, ${s.misses} misses, ${humanBytes(s.upstreamBytes)} from upstream\n`,
      );
    });
  cache
    .command("prefetch")
    .description("fetch a blob into the cache now, with progress (from a release's image or explicit digest/URL)")
    .argument("<version-or-digest>", "a release version (its image for --board) or a sha256 digest")
    .option("--board <id>", "board of the release's image")
    .option("--source <url>", "origin URL (with a digest)", collectOpt, [])
    .option("--size <bytes>", "expected size (with a digest)", ctx.int("--size"), 0)
    .option("--pin <holder>", "pin it for this holder")
    .action(async (what: string, o: { board?: string; source: string[]; size: number; pin?: string }) => {
      let req: distributor.PrefetchRequest = { digest: what, size: o.size, sources: o.source, pinHolder: o.pin ?? "" };
      if (what.startsWith("v")) {
        const rel = await using(ctx, "catalog", (c) => c.getRelease({ version: what }));
        const imgs = rel.manifest!.images.filter((i) => !o.board || i.board === o.board);
        if (imgs.length !== 1)
          throw new CliError(`${what} has images for ${rel.manifest!.images.map((i) => i.board).join(", ")}: choose one with --board`);
        req = { digest: imgs[0]!.compressedSha256, size: imgs[0]!.compressedSize, sources: [imgs[0]!.url], pinHolder: o.pin ?? "" };
      }
      await using(ctx, "distributor", async (c) => {
        for await (const p of c.prefetch(req)) {
          if (process.stderr.isTTY)
            process.stderr.write(
              `\r${bar(p.bytesTotal ? p.bytesDone / p.bytesTotal : 0)} ${humanBytes(p.bytesDone)}/${humanBytes(p.bytesTotal)} ${humanBytes(p.rate)}/s `,
            );
          if (p.done)
            ctx.print(
              distributor.PrefetchProgress.toJSON(p),
              () => `${process.stderr.isTTY ? "\n" : ""}cached ${p.digest} (${humanBytes(p.bytesTotal)}) from ${p.source || "cache"}\n`,
            );
        }
      });
    });
  cache
    .command("import")
    .description("import an image file into the cache (streamed to the distributor; its sha256 is checked there)")
    .argument("<file>")
    .option("--digest <sha256>", "expected sha256 (default: computed from the file)")
    .action(async (file: string, o: { digest?: string }) => {
      const size = fileSize(file);
      const digest = o.digest ?? (await sha256File(file));
      const b = await importBlob(ctx, file, digest, size);
      ctx.print(distributor.Blob.toJSON(b), () => `imported ${b.digest} (${humanBytes(b.size)})\n`);
    });

  // ---- bundle ----
  const bundle = program.command("bundle").description("air-gapped release bundles: signed envelopes + images in one tar");
  bundle
    .command("create")
    .description("write a bundle: the signed envelopes and every image they name, found among the given files")
    .argument("<envelope...>", "signed envelope files (envelope.json)")
    .requiredOption("-o, --out <file.tar>", "bundle file to write")
    .option("--image <file>", "image file (matched to a manifest by its sha256); repeatable", collectOpt, [])
    .action(async (files: string[], o: { out: string; image: string[] }) => {
      const envs = files.map((f) => ({ file: f, env: readEnvelope(f) }));
      const byDigest = new Map<string, string>();
      for (const img of o.image) byDigest.set(await sha256File(img), img);
      const blobs = new Map<string, { file: string; size: number }>();
      for (const { file, env } of envs) {
        const m = parseManifest(Buffer.from(env.manifest));
        for (const i of m.images) {
          const f = byDigest.get(i.compressedSha256);
          if (!f) throw new CliError(`${file}: no --image file has the sha256 of ${m.version}'s ${i.board} image (${i.compressedSha256})`);
          blobs.set(i.compressedSha256, { file: f, size: fileSize(f) });
        }
      }
      const out = createWriteStream(o.out);
      const index = {
        format: "ferry.bundle.v1",
        releases: envs.map((e) => parseManifest(Buffer.from(e.env.manifest)).version),
        blobs: [...blobs].map(([d, b]) => ({ digest: d, size: b.size })),
      };
      await writeEntry(out, "bundle.json", Buffer.byteLength(JSON.stringify(index)), Buffer.from(JSON.stringify(index)));
      for (const { env } of envs) {
        const text = Buffer.from(envelopeJson(env));
        await writeEntry(out, `envelopes/${parseManifest(Buffer.from(env.manifest)).version}.json`, text.length, text);
      }
      for (const [d, b] of blobs) await writeEntry(out, `blobs/sha256/${d}`, b.size, createReadStream(b.file));
      await endTar(out);
      await new Promise<void>((r, j) => out.end((err?: Error | null) => (err ? j(err) : r())));
      ctx.print(index, () => `wrote ${o.out}: ${index.releases.join(", ")} with ${blobs.size} image(s)\n`);
    });
  bundle
    .command("import")
    .description("import a bundle: every image into the site distributor (checked by sha256), then every release into the catalog")
    .argument("<file.tar>")
    .action(async (file: string) => {
      const envelopes: Array<{ name: string; env: events.SignedEnvelope }> = [];
      const imported: string[] = [];
      let sawIndex = false;
      for await (const e of readTar(createReadStream(file))) {
        if (e.name === "bundle.json") {
          sawIndex = true;
          let text = "";
          for await (const c of e.body) text += c.toString();
          if ((JSON.parse(text) as { format?: string }).format !== "ferry.bundle.v1") throw new CliError(`${file}: not a ferry.bundle.v1 bundle`);
        } else if (e.name.startsWith("envelopes/")) {
          const chunks: Buffer[] = [];
          for await (const c of e.body) chunks.push(c);
          envelopes.push({ name: e.name, env: events.SignedEnvelope.fromJSON(JSON.parse(Buffer.concat(chunks).toString())) });
        } else if (e.name.startsWith("blobs/sha256/")) {
          const digest = e.name.slice("blobs/sha256/".length);
          // A read error (a truncated bundle) ends the upload early and is what gets reported.
          const failure: { err?: Error } = {};
          await using(ctx, "distributor", (c) => c.importBlob(blobRequests(digest, e.size, guarded(e.body, failure)))).catch((err: unknown) => {
            throw failure.err ?? err;
          });
          imported.push(digest);
        }
      }
      if (!sawIndex) throw new CliError(`${file}: no bundle.json: not a Ferry release bundle`);
      const published: string[] = [];
      for (const { env } of envelopes) {
        const r = await using(ctx, "catalog", (c) => c.publishRelease({ envelope: env }));
        published.push(`${r.release!.version}${r.created ? "" : " (already published)"}`);
      }
      ctx.print(
        { images: imported, releases: published },
        () => `imported ${imported.length} image(s) into the distributor; published ${published.join(", ")}\n`,
      );
    });
}

function collectOpt(v: string, prev: string[]): string[] {
  return [...prev, v];
}

function fileSize(file: string): number {
  try {
    return statSync(file).size;
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

async function sha256File(file: string): Promise<string> {
  fileSize(file);
  const h = createHash("sha256");
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  return h.digest("hex");
}

async function* blobRequests(digest: string, size: number, body: AsyncIterable<Buffer>): AsyncGenerator<distributor.ImportBlobRequest> {
  yield { header: { digest, size, localPath: "" } };
  for await (const c of body) for (let i = 0; i < c.length; i += 1 << 20) yield { chunk: c.subarray(i, i + (1 << 20)) };
}

async function* guarded(body: AsyncIterable<Buffer>, failure: { err?: Error }): AsyncGenerator<Buffer> {
  try {
    for await (const c of body) yield c;
  } catch (err) {
    failure.err = new CliError((err as Error).message);
  }
}

function importBlob(ctx: Ctx, file: string, digest: string, size: number) {
  return using(ctx, "distributor", (c) => c.importBlob(blobRequests(digest, size, createReadStream(file) as AsyncIterable<Buffer>)));
}

function bar(f: number, width = 24): string {
  const n = Math.round(Math.max(0, Math.min(1, f)) * width);
  return `[${"#".repeat(n)}${"-".repeat(width - n)}]`;
}

function eta(s: number): string {
  if (!s || !Number.isFinite(s)) return "";
  return s >= 60 ? `ETA ${Math.floor(s / 60)}m${Math.round(s % 60)}s` : `ETA ${Math.round(s)}s`;
}

/** Follows an upgrade until it ends: live bars on a terminal, one line per event otherwise. */
async function watch(ctx: Ctx, id: string, fromSeq: number): Promise<void> {
  const tty = process.stdout.isTTY === true;
  let drawn = 0;
  let last: planner.Upgrade | undefined;
  const draw = (u: planner.Upgrade) => {
    const lines = [
      `upgrade ${u.id}: ${phase(u.phase)} → ${u.targetVersion}  ${u.nodesDone}/${u.nodesTotal} nodes  ${u.percent.toFixed(0)}%  ${u.message}`,
    ];
    if (u.staging && !u.staging.staged)
      lines.push(`  staging ${bar(u.staging.bytesTotal ? u.staging.bytesDone / u.staging.bytesTotal : 0)} ${u.staging.message}`);
    const w = Math.max(...u.progress.map((g) => g.node.length), 4);
    for (const g of u.progress) {
      const bytes = g.step === events.StepName.STEP_NAME_WRITE_SLOT && g.bytesTotal ? ` ${humanBytes(g.bytesDone)}/${humanBytes(g.bytesTotal)}` : "";
      lines.push(
        `  ${g.node.padEnd(w)} ${bar(g.percent / 100)} ${g.percent.toFixed(0).padStart(3)}%  hop ${Math.min(g.hopIndex + 1, g.hopCount)}/${g.hopCount}  ${runState(g.runState).padEnd(11)} ${stepName(g.step).padEnd(18)}${bytes} ${eta(g.etaSeconds)}`,
      );
    }
    const cols = process.stdout.columns || 120;
    if (drawn) process.stdout.write(`\x1b[${drawn}A`);
    process.stdout.write(lines.map((l) => `\x1b[2K${l.slice(0, cols - 1)}\n`).join(""));
    drawn = lines.length;
  };
  await using(ctx, "planner", async (c) => {
    for await (const r of c.watchUpgrade({ id, fromStreamSeq: fromSeq })) {
      if (r.snapshot) {
        last = r.snapshot;
        if (tty) draw(r.snapshot);
        else if (!tty)
          process.stdout.write(
            `${new Date().toISOString()} upgrade ${id} ${phase(r.snapshot.phase)} ${r.snapshot.nodesDone}/${r.snapshot.nodesTotal} ${r.snapshot.percent.toFixed(0)}% ${r.snapshot.message}\n`,
          );
      } else if (r.event && !tty) {
        const e = r.event;
        const bytes = e.bytesTotal ? ` ${humanBytes(e.bytesDone)}/${humanBytes(e.bytesTotal)}` : "";
        process.stdout.write(
          `${e.time?.toISOString() ?? ""} #${r.streamSeq} ${e.node} hop ${e.hopIndex + 1} ${e.fromVersion}→${e.toVersion} ${stepName(e.step)} ${lower(events.stepStateToJSON(e.state), "STEP_STATE_")}${bytes}${e.errorCode ? ` ${e.errorCode}` : ""}${e.message ? `: ${e.message}` : ""}\n`,
        );
      }
    }
  });
  if (last && last.phase !== planner.UpgradePhase.UPGRADE_PHASE_SUCCEEDED) process.exitCode = 4;
}
