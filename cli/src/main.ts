#!/usr/bin/env node
// ferry: the operator's and release engineer's command line.
import { createReadStream, existsSync } from "node:fs";
import { join } from "node:path";
import { Command, InvalidArgumentError } from "commander";
import type { events } from "@ferry/proto";
import { catalog } from "@ferry/proto";
import { createClient, GrpcCallError, loadClientOptions } from "@ferry/grpc";
import { ConfigError, FerryError } from "@ferry/runtime";
import { encodeManifest, measureImage, MANIFEST_TYPE, parseManifest } from "@ferry/release";
import { addSignatures, formatKeyringJson, loadPublicKey, parseKeyringJson, signEnvelope, writeKeyPair } from "@ferry/signing";
import { registerAuditCommands } from "./commands/audit.ts";
import { registerFleetCommands } from "./commands/fleet.ts";
import { CliError, envelopeJson, humanBytes, isEnvelopeFile, readEnvelope, readKeys, readText, table, writeOut } from "./io.ts";

const program = new Command("ferry")
  .description("Ferry: OS upgrades for Kubernetes edge fleets (A/B root partitions)")
  .option("--catalog <addr>", "catalog gRPC address (env FERRY_CATALOG_ADDR)", process.env.FERRY_CATALOG_ADDR ?? "127.0.0.1:7401")
  .option("--planner <addr>", "planner gRPC address (env FERRY_PLANNER_ADDR)", process.env.FERRY_PLANNER_ADDR ?? "127.0.0.1:7402")
  .option(
    "--distributor <addr>",
    "site distributor gRPC admin address (env FERRY_DISTRIBUTOR_ADDR)",
    process.env.FERRY_DISTRIBUTOR_ADDR ?? "127.0.0.1:7403",
  )
  .option("--json", "print JSON instead of tables")
  .showHelpAfterError()
  .addHelpText("after", "\nTLS and auth for gRPC calls come from FERRY_GRPC_CA, FERRY_GRPC_CLIENT_CERT, FERRY_GRPC_CLIENT_KEY and FERRY_GRPC_TOKEN.");

const globals = () => program.opts<{ catalog: string; planner: string; distributor: string; json?: boolean }>();
const catalogClient = () => createClient(catalog.CatalogServiceService, globals().catalog, loadClientOptions());
const collect = (v: string, prev: string[]) => [...prev, v];
const print = (json: unknown, text: () => string) => process.stdout.write(globals().json ? `${JSON.stringify(json, null, 2)}\n` : text());

async function withCatalog<T>(fn: (c: ReturnType<typeof catalogClient>) => Promise<T>): Promise<T> {
  const c = catalogClient();
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

// ---- keys ----
const keys = program.command("keys").description("signing keys and keyrings");
keys
  .command("generate")
  .description("generate an ed25519 key pair: <name>.key (private, mode 0600) and <name>.pub")
  .requiredOption("--out <dir>", "directory to write the key files into")
  .option("--name <name>", "file name stem", "release")
  .action((o: { out: string; name: string }) => {
    const priv = join(o.out, `${o.name}.key`);
    if (existsSync(priv)) throw new CliError(`${priv} already exists; refusing to overwrite a private key`);
    const k = writeKeyPair(o.out, o.name);
    print(
      { keyId: k.keyId, privateKey: k.privateFile, publicKey: k.publicFile },
      () => `key ${k.keyId}\n  private ${k.privateFile}\n  public  ${k.publicFile}\n`,
    );
  });
keys
  .command("keyring")
  .description("write a keyring (trusted release keys + threshold, and the planner's assignment keys) for the catalog and the nodes")
  .argument("<pub...>", "release public key files (.pub)")
  .option("--threshold <n>", "distinct release keys that must sign", (v) => parseIntArg(v, "--threshold"), 1)
  .option(
    "--planner-key <pub>",
    "the planner's assignment public key (planner.pub from `ferry site init`); repeat during a rotation. Boards refuse every assignment without one",
    (v: string, acc: string[]) => [...acc, v],
    [] as string[],
  )
  .option("-o, --out <file>", "output file (default stdout)")
  .action((pubs: string[], o: { threshold: number; plannerKey: string[]; out?: string }) => {
    const read = (files: string[]) =>
      files.map((f) => {
        const pem = readText(f, "public key");
        try {
          loadPublicKey(pem);
        } catch (err) {
          throw new CliError(`${f}: ${(err as Error).message}`);
        }
        return pem;
      });
    const json = formatKeyringJson(read(pubs), o.threshold, read(o.plannerKey));
    try {
      parseKeyringJson(json); // the threshold must not exceed the distinct keys; roles apart
    } catch (err) {
      throw new CliError((err as Error).message);
    }
    writeOut(o.out, json);
  });

// ---- releases ----
const releases = program.command("releases").alias("release").description("signed OS releases in the catalog");
releases
  .command("manifest")
  .description("write a release manifest for an image file (measures compressed and raw size and sha256)")
  .requiredOption("--release-version <v>", "release version = the Kubernetes version it ships, e.g. v1.34.6")
  .requiredOption("--board <id>", "board id, e.g. ls1046a-rdb")
  .option("--arch <arch>", "CPU architecture", "arm64")
  .requiredOption("--image <file>", "the image file (.img.zst, .img.gz or raw .img)")
  .requiredOption("--url <url>", "origin URL the image will be served from")
  .option("--allowed-from <v>", "version or minor this release may be installed over (repeatable)", collect, [])
  .option("--notes <text>", "release notes", "")
  .option("--expires <time>", "RFC 3339 time after which the release is refused")
  .option("--add-to <manifest>", "add this board's image to an existing manifest file")
  .option("-o, --out <file>", "output file (default stdout)")
  .action(
    async (o: {
      releaseVersion: string;
      board: string;
      arch: string;
      image: string;
      url: string;
      allowedFrom: string[];
      notes: string;
      expires?: string;
      addTo?: string;
      out?: string;
    }) => {
      const m = await measureImage(createReadStream(o.image, { highWaterMark: 1 << 20 }));
      const image: events.BoardImage = { board: o.board, arch: o.arch, url: o.url, ...m };
      let manifest: events.ReleaseManifest;
      if (o.addTo) {
        manifest = parseManifest(Buffer.from(readText(o.addTo, "manifest")));
        manifest.images = [...manifest.images.filter((i) => i.board !== o.board), image];
      } else {
        const expires = o.expires ? new Date(o.expires) : undefined;
        if (expires && Number.isNaN(expires.getTime()))
          throw new CliError(`--expires "${o.expires}" is not a time (use RFC 3339, e.g. 2027-06-30T00:00:00Z)`);
        manifest = {
          type: MANIFEST_TYPE,
          version: o.releaseVersion,
          images: [image],
          allowedFrom: o.allowedFrom,
          notes: o.notes,
          expires,
          issuedAt: new Date(),
        };
      }
      writeOut(o.out, Buffer.from(encodeManifest(manifest)).toString("utf8"));
    },
  );
releases
  .command("sign")
  .description("sign a manifest (or add signatures to an envelope); writes the signed envelope")
  .argument("<file>", "manifest.json, or an envelope to co-sign")
  .requiredOption("--key <file>", "private key (.key); repeatable", collect, [])
  .option("-o, --out <file>", "output file (default stdout)")
  .action((file: string, o: { key: string[]; out?: string }) => {
    const ks = readKeys(o.key);
    if (isEnvelopeFile(file)) {
      const env = readEnvelope(file);
      parseManifest(env.manifest);
      writeOut(o.out, envelopeJson(addSignatures(env, ks)));
      return;
    }
    const bytes = Buffer.from(readText(file, "manifest"), "utf8");
    parseManifest(bytes); // refuse to sign a malformed manifest
    writeOut(o.out, envelopeJson(signEnvelope(bytes, ks)));
  });
releases
  .command("publish")
  .description("publish a signed envelope to the catalog (or sign a manifest with --key and publish it)")
  .argument("<file>", "envelope.json (or manifest.json with --key)")
  .option("--key <file>", "sign a manifest with this key first; repeatable", collect, [])
  .action(async (file: string, o: { key: string[] }) => {
    const envelope = isEnvelopeFile(file) ? readEnvelope(file) : signEnvelope(Buffer.from(readText(file, "manifest")), readKeys(o.key));
    const res = await withCatalog((c) => c.publishRelease({ envelope }));
    print(
      catalog.PublishReleaseResponse.toJSON(res),
      () => `${res.created ? "published" : "already published"} ${res.release!.version} (signed by ${res.release!.signedBy.join(", ")})\n`,
    );
  });
releases
  .command("ls")
  .description("list releases, aliases and blocked edges")
  .option("--board <id>", "only releases with an image for this board", "")
  .action(async (o: { board: string }) => {
    const res = await withCatalog((c) => c.listReleases({ board: o.board }));
    print(catalog.ListReleasesResponse.toJSON(res), () => {
      const aliases = new Map<string, string[]>();
      for (const a of res.aliases) aliases.set(a.version, [...(aliases.get(a.version) ?? []), a.name]);
      const rows = [["VERSION", "BOARDS", "SIZE", "ALIASES", "STATUS"]];
      for (const r of res.releases) {
        const imgs = r.manifest!.images;
        const expired = r.manifest!.expires && r.manifest!.expires.getTime() <= Date.now();
        rows.push([
          r.version,
          imgs.map((i) => i.board).join(","),
          humanBytes(Math.max(...imgs.map((i) => i.compressedSize))),
          (aliases.get(r.version) ?? []).join(","),
          r.blocked ? `blocked: ${r.blockReason}` : expired ? "expired" : r.resignedBySite ? "ok (site-signed)" : "ok",
        ]);
      }
      let out = res.releases.length ? table(rows) : "no releases\n";
      for (const e of res.blockedEdges) out += `blocked edge ${e.fromVersion} → ${e.toVersion}: ${e.reason}\n`;
      return out;
    });
  });
releases
  .command("get")
  .description("show one release")
  .argument("<version>")
  .action(async (version: string) => {
    const r = await withCatalog((c) => c.getRelease({ version }));
    const j = catalog.Release.toJSON(r) as Record<string, unknown>;
    delete j.envelope;
    process.stdout.write(`${JSON.stringify(j, null, 2)}\n`);
  });
releases
  .command("block")
  .description("block a release: no path leads to it")
  .argument("<version>")
  .option("--reason <text>", "why", "")
  .action(async (version: string, o: { reason: string }) => {
    const r = await withCatalog((c) => c.blockRelease({ version, reason: o.reason }));
    print(catalog.Release.toJSON(r), () => `blocked ${r.version}${r.blockReason ? `: ${r.blockReason}` : ""}\n`);
  });
releases
  .command("unblock")
  .argument("<version>")
  .action(async (version: string) => {
    const r = await withCatalog((c) => c.unblockRelease({ version }));
    print(catalog.Release.toJSON(r), () => `unblocked ${r.version}\n`);
  });
releases
  .command("block-edge")
  .description("block one upgrade edge (from → to)")
  .argument("<from>")
  .argument("<to>")
  .option("--reason <text>", "why", "")
  .action(async (from: string, to: string, o: { reason: string }) => {
    await withCatalog((c) => c.blockEdge({ fromVersion: from, toVersion: to, reason: o.reason }));
    print({ from, to }, () => `blocked edge ${from} → ${to}\n`);
  });
releases
  .command("unblock-edge")
  .argument("<from>")
  .argument("<to>")
  .action(async (from: string, to: string) => {
    await withCatalog((c) => c.unblockEdge({ fromVersion: from, toVersion: to }));
    print({ from, to }, () => `unblocked edge ${from} → ${to}\n`);
  });
releases
  .command("alias")
  .description("point an alias (e.g. stable) at a version; empty version removes it")
  .argument("<name>")
  .argument("[version]", "", "")
  .action(async (name: string, version: string) => {
    const a = await withCatalog((c) => c.setAlias({ name, version }));
    print(catalog.Alias.toJSON(a), () => (version ? `${a.name} → ${a.version}\n` : `removed alias ${name}\n`));
  });
releases
  .command("import")
  .description("import a monok8s catalog.yaml (unsigned: needs --trust; the catalog re-signs with its site key)")
  .argument("<catalog.yaml>")
  .requiredOption("--board <id>", "board the images are for")
  .option("--arch <arch>", "CPU architecture", "arm64")
  .option("--trust", "explicitly trust this unsigned catalog and have it re-signed with the site key")
  .option("--image-dir <dir>", "directory on the catalog's host holding the images (default: fetch each URL)", "")
  .action(async (file: string, o: { board: string; arch: string; trust?: boolean; imageDir: string }) => {
    const res = await withCatalog((c) =>
      c.importCatalog(
        { catalogYaml: readText(file, "catalog"), board: o.board, arch: o.arch, trustAndResign: o.trust === true, imageDir: o.imageDir },
        { deadlineMs: 30 * 60_000 },
      ),
    );
    print(catalog.ImportCatalogResponse.toJSON(res), () => {
      let out = "";
      for (const r of res.releases)
        out += `imported ${r.version} (${humanBytes(r.manifest!.images[0]!.compressedSize)}, re-signed by ${r.signedBy.join(",")})\n`;
      for (const v of res.unchanged) out += `unchanged ${v}\n`;
      if (res.stable) out += `stable → ${res.stable}\n`;
      return out;
    });
  });

// ---- graph questions ----
program
  .command("path")
  .description("the upgrade path from a version to a target (version, minor or alias) for a board")
  .argument("<from>", "current version, e.g. v1.32.9")
  .argument("<target>", "v1.35.2, v1.35, stable or latest")
  .requiredOption("--board <id>", "board id")
  .action(async (from: string, target: string, o: { board: string }) => {
    const res = await withCatalog((c) => c.findPath({ fromVersion: from, target, board: o.board }));
    print(catalog.FindPathResponse.toJSON(res), () => {
      if (res.hops.length === 0) return `already on ${res.targetVersion}\n`;
      const rows = [["HOP", "FROM", "TO", "DOWNLOAD"]];
      res.hops.forEach((h, i) => rows.push([String(i + 1), h.fromVersion, h.toVersion, humanBytes(h.image!.compressedSize)]));
      return `${table(rows)}${res.hops.length} hop(s) to ${res.targetVersion}, ${humanBytes(res.downloadBytes)} to download, ${res.hops.length} reboot(s)\n`;
    });
  });
program
  .command("resolve")
  .description("resolve a target (version, minor or alias) to one release")
  .argument("<target>")
  .option("--board <id>", "only releases with an image for this board", "")
  .action(async (target: string, o: { board: string }) => {
    const res = await withCatalog((c) => c.resolveTarget({ target, board: o.board }));
    const j = catalog.ResolveTargetResponse.toJSON(res) as Record<string, unknown>;
    delete j.release;
    print(j, () => `${target} → ${res.version}\n`);
  });
program
  .command("graph")
  .description("the upgrade graph: releases and the edges between them")
  .option("--board <id>", "only releases with an image for this board", "")
  .action(async (o: { board: string }) => {
    const g = await withCatalog((c) => c.getUpgradeGraph({ board: o.board }));
    print(catalog.UpgradeGraph.toJSON(g), () => {
      const out = new Map<string, string[]>();
      for (const e of g.edges) out.set(e.fromVersion, [...(out.get(e.fromVersion) ?? []), e.toVersion]);
      return g.nodes.map((n) => `${n.version}${n.blocked ? " (blocked)" : ""} → ${(out.get(n.version) ?? []).join(", ") || "-"}\n`).join("");
    });
  });

const ctx = {
  print,
  addrs: () => globals(),
  int: (name: string) => (v: string) => parseIntArg(v, name),
};
registerFleetCommands(program, ctx);
registerAuditCommands(program, ctx);

function parseIntArg(v: string, name: string): number {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`${name} must be a whole number`);
  return Number(v);
}

try {
  await program.parseAsync(process.argv);
} catch (err) {
  const msg =
    err instanceof GrpcCallError || err instanceof CliError || err instanceof FerryError || err instanceof ConfigError
      ? err.message
      : ((err as Error).message ?? String(err));
  process.stderr.write(`ferry: ${msg.replace(/\n\s*/g, " ")}\n`);
  process.exitCode = err instanceof GrpcCallError && err.code === 14 ? 3 : 1;
}
