// The catalog's operations, independent of gRPC: publish and import releases, block and
// alias them, and answer graph questions from the current state.
import type { catalog } from "@ferry/proto";
import { events } from "@ferry/proto";
import { alreadyExists, failedPrecondition, invalidArgument, notFound } from "@ferry/runtime";
import {
  encodeManifest,
  isVersion,
  measureImage,
  MANIFEST_TYPE,
  parseManifest,
  parseVersion,
  compareVersions,
  truncate,
  verifyRelease,
} from "@ferry/release";
import { createKeyring, publicPemOf, signEnvelope, verifyEnvelope, type Keyring, type SigningKey } from "@ferry/signing";
import type { KvCatalogStore } from "./adapters/kv-store.ts";
import { openImage, type ImageSourceOptions } from "./adapters/image-source.ts";
import { edgeKey, findPath, graphEdges, LATEST, resolveTarget, type CatalogView, type TargetKind } from "./domain/graph.ts";
import { parseMonok8sCatalog } from "./domain/monok8s.ts";
import { CatalogCode } from "./errors.ts";

type Release = catalog.Release;

const ALIAS_RE = /^[a-z][a-z0-9-]{0,62}$/;
const BOARD_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const MAX_REASON = 1024;

export interface CatalogOptions {
  store: KvCatalogStore;
  keyring: Keyring;
  /** Re-signs what an operator explicitly trusts (ImportCatalog). */
  siteKey: SigningKey | undefined;
  imports: ImageSourceOptions;
  /** ImportCatalog's limit on an image, compressed and raw (default 64 GiB). */
  maxImageBytes?: number;
  now?: () => Date;
}

export class Catalog {
  readonly #store: KvCatalogStore;
  readonly #keyring: Keyring;
  readonly #siteKey: SigningKey | undefined;
  readonly #imports: ImageSourceOptions;
  readonly #now: () => Date;
  readonly #maxImageBytes: number;

  constructor(opts: CatalogOptions) {
    this.#maxImageBytes = opts.maxImageBytes ?? 64 * 1024 ** 3;
    this.#store = opts.store;
    this.#keyring = opts.keyring;
    this.#siteKey = opts.siteKey;
    this.#imports = opts.imports;
    this.#now = opts.now ?? (() => new Date());
  }

  async publish(envelope: events.SignedEnvelope | undefined): Promise<{ release: Release; created: boolean }> {
    const { manifest, keyIds } = verifyRelease(envelope, this.#keyring, this.#now());
    const release: Release = {
      version: manifest.version,
      manifest,
      envelope: envelope!,
      blocked: false,
      blockReason: "",
      publishedAt: this.#now(),
      signedBy: keyIds,
      resignedBySite: false,
    };
    const res = await this.#store.createRelease(release);
    if (!res.created && !Buffer.from(res.release.envelope!.manifest).equals(Buffer.from(envelope!.manifest))) {
      throw alreadyExists(
        `release ${manifest.version} is already published with a different manifest; publish a newer version instead`,
        "RELEASE_EXISTS",
      );
    }
    return res;
  }

  async importCatalog(req: catalog.ImportCatalogRequest, signal?: AbortSignal): Promise<catalog.ImportCatalogResponse> {
    if (!req.trustAndResign) {
      throw failedPrecondition(
        "catalog.yaml is unsigned: nothing was imported. Set trust_and_resign to trust it explicitly; the catalog then re-signs each release with its site key",
        "TRUST_REQUIRED",
      );
    }
    if (!this.#siteKey)
      throw failedPrecondition("the catalog has no site key (FERRY_SITE_KEY_FILE), so it cannot re-sign an imported catalog", "NO_SITE_KEY");
    if (!BOARD_RE.test(req.board)) throw invalidArgument(`board "${truncate(req.board)}" must be 1-63 of [a-z0-9._-]`, "BOARD_INVALID");
    if (!BOARD_RE.test(req.arch)) throw invalidArgument(`arch "${truncate(req.arch)}" must be 1-63 of [a-z0-9._-]`, "ARCH_INVALID");
    const parsed = parseMonok8sCatalog(req.catalogYaml);
    if (parsed.stable && !parsed.images.some((i) => i.version === parsed.stable) && !this.#store.release(parsed.stable)) {
      throw invalidArgument(`catalog_yaml: stable ${parsed.stable} is neither in images nor in the catalog`, "CATALOG_INVALID");
    }
    // Measure every image first (one streaming pass each), so a bad image imports nothing.
    const manifests: events.ReleaseManifest[] = [];
    for (const img of parsed.images) {
      const source = await openImage(img.url, req.imageDir, this.#imports, signal);
      let m;
      try {
        m = await measureImage(source, undefined, signal, { maxCompressedBytes: this.#maxImageBytes, maxRawBytes: this.#maxImageBytes });
      } catch (err) {
        throw invalidArgument(`image of ${img.version} (${img.url}) could not be read or decompressed: ${(err as Error).message}`, "IMAGE_CORRUPT");
      }
      if (m.rawSha256 !== img.rawSha256) {
        throw invalidArgument(
          `image of ${img.version}: the raw image does not match the sha256 catalog.yaml gives (${img.rawSha256}); nothing was imported`,
          "CHECKSUM_MISMATCH",
        );
      }
      manifests.push({
        type: MANIFEST_TYPE,
        version: img.version,
        images: [{ board: req.board, arch: req.arch, url: img.url, ...m }],
        allowedFrom: [],
        notes: "imported from a monok8s catalog.yaml and re-signed with the site key",
        expires: undefined,
        issuedAt: undefined,
      });
    }
    const releases: Release[] = [];
    const unchanged: string[] = [];
    for (const manifest of manifests) {
      const existing = this.#store.release(manifest.version);
      if (existing) {
        if (sameImages(existing.manifest!, manifest)) {
          unchanged.push(manifest.version);
          continue;
        }
        throw alreadyExists(
          `release ${manifest.version} is already in the catalog with different images; nothing after it was imported`,
          "RELEASE_EXISTS",
        );
      }
    }
    for (const manifest of manifests) {
      if (unchanged.includes(manifest.version)) continue;
      const envelope = signEnvelope(encodeManifest(manifest), [this.#siteKey]);
      const release: Release = {
        version: manifest.version,
        manifest,
        envelope,
        blocked: false,
        blockReason: "",
        publishedAt: this.#now(),
        signedBy: [this.#siteKey.keyId],
        resignedBySite: true,
      };
      const res = await this.#store.createRelease(release);
      if (res.created) releases.push(res.release);
      else unchanged.push(manifest.version);
    }
    if (parsed.stable) await this.setAlias("stable", parsed.stable);
    return { releases, unchanged, stable: parsed.stable ?? "" };
  }

  get(version: string): Release {
    checkVersion(version);
    const r = this.#store.release(version);
    if (!r) throw notFound(`release ${version} is not in the catalog`, CatalogCode.RELEASE_NOT_FOUND);
    return r;
  }

  list(board: string): { releases: Release[]; aliases: catalog.Alias[]; blockedEdges: catalog.BlockedEdge[] } {
    if (board) checkBoard(board);
    const releases = this.#store
      .releases()
      .filter((r) => !board || r.manifest!.images.some((i) => i.board === board))
      .sort((a, b) => compareVersions(b.version, a.version));
    return { releases, aliases: this.aliases(board), blockedEdges: [...this.#store.blockedEdges().values()] };
  }

  aliases(board = ""): catalog.Alias[] {
    const out = [...this.#store.aliases().values()].map((a) => ({ ...a, computed: false }));
    try {
      out.push({ name: LATEST, version: resolveTarget(this.view(), LATEST, board || undefined).version, computed: true });
    } catch {
      // No release yet: `latest` names nothing.
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async block(version: string, reason: string): Promise<Release> {
    checkVersion(version);
    checkReason(reason);
    const r = await this.#store.updateRelease(version, (cur) => ({ ...cur, blocked: true, blockReason: reason }));
    if (!r) throw notFound(`release ${version} is not in the catalog`, CatalogCode.RELEASE_NOT_FOUND);
    return r;
  }

  async unblock(version: string): Promise<Release> {
    checkVersion(version);
    const r = await this.#store.updateRelease(version, (cur) => ({ ...cur, blocked: false, blockReason: "" }));
    if (!r) throw notFound(`release ${version} is not in the catalog`, CatalogCode.RELEASE_NOT_FOUND);
    return r;
  }

  async blockEdge(from: string, to: string, reason: string): Promise<catalog.BlockedEdge> {
    checkVersion(from);
    checkVersion(to);
    checkReason(reason);
    if (compareVersions(to, from) <= 0) throw invalidArgument(`${to} is not newer than ${from}: there is no such edge to block`, "EDGE_INVALID");
    const edge = { fromVersion: from, toVersion: to, reason, blockedAt: this.#now() };
    await this.#store.putBlockedEdge(edge);
    return edge;
  }

  async unblockEdge(from: string, to: string): Promise<void> {
    checkVersion(from);
    checkVersion(to);
    if (!(await this.#store.deleteBlockedEdge(from, to))) throw notFound(`the edge ${from} → ${to} is not blocked`, "EDGE_NOT_BLOCKED");
  }

  async setAlias(name: string, version: string): Promise<catalog.Alias> {
    if (name === LATEST) throw invalidArgument(`"latest" is computed (the newest unblocked release) and cannot be set`, "ALIAS_RESERVED");
    if (!ALIAS_RE.test(name)) throw invalidArgument(`alias "${truncate(name)}" must be 1-63 of [a-z0-9-], starting with a letter`, "ALIAS_INVALID");
    if (version === "") {
      if (!this.#store.aliases().has(name)) throw notFound(`alias ${name} does not exist`, "ALIAS_NOT_FOUND");
      await this.#store.deleteAlias(name);
      return { name, version: "", computed: false };
    }
    checkVersion(version);
    if (!this.#store.release(version)) throw notFound(`release ${version} is not in the catalog`, CatalogCode.RELEASE_NOT_FOUND);
    const alias = { name, version, computed: false };
    await this.#store.putAlias(alias);
    return alias;
  }

  graph(board: string): catalog.UpgradeGraph {
    if (board) checkBoard(board);
    const view = this.view();
    const rel = view.releases.filter((r) => !board || r.boards.includes(board));
    return {
      nodes: rel
        .sort((a, b) => compareVersions(b.version, a.version))
        .map((r) => ({ version: r.version, blocked: r.blocked, blockReason: r.blockReason })),
      edges: graphEdges(view, board || undefined).map((e) => ({ fromVersion: e.from, toVersion: e.to })),
      blockedEdges: [...this.#store.blockedEdges().values()],
      aliases: this.aliases(board),
    };
  }

  resolve(target: string, board: string): { version: string; kind: TargetKind; release: Release } {
    checkTarget(target);
    if (board) checkBoard(board);
    const r = resolveTarget(this.view(), target, board || undefined);
    return { ...r, release: this.#store.release(r.version)! };
  }

  findPath(from: string, target: string, board: string): catalog.FindPathResponse {
    checkVersion(from);
    checkTarget(target);
    if (!board) throw invalidArgument("board is required: paths depend on which releases have an image for the board", "BOARD_REQUIRED");
    checkBoard(board);
    const view = this.view();
    const { version } = resolveTarget(view, target, board);
    const versions = findPath(view, from, version, board);
    let prev = from;
    const hops = versions.map((v) => {
      const r = this.#store.release(v)!;
      const hop = { fromVersion: prev, toVersion: v, image: r.manifest!.images.find((i) => i.board === board)!, envelope: r.envelope! };
      prev = v;
      return hop;
    });
    return { targetVersion: version, hops, downloadBytes: hops.reduce((n, h) => n + h.image.compressedSize, 0) };
  }

  view(): CatalogView {
    return {
      releases: this.#store.releases().map((r) => ({
        version: r.version,
        blocked: r.blocked,
        blockReason: r.blockReason,
        allowedFrom: r.manifest!.allowedFrom,
        boards: r.manifest!.images.map((i) => i.board),
      })),
      aliases: new Map([...this.#store.aliases().values()].map((a) => [a.name, a.version])),
      blockedEdges: new Map([...this.#store.blockedEdges().values()].map((e) => [edgeKey(e.fromVersion, e.toVersion), e.reason])),
    };
  }
}

/**
 * Checks a release read back from the bucket as publish checked it: its envelope carries
 * the keyring's threshold of signatures (or the site key's, for an imported release) and
 * its manifest is the signed one (the served manifest is re-read from the envelope, so a
 * record whose fields were edited serves what was signed or nothing). Expiry is not
 * checked here: an expired release stays listed, and boards refuse to install it.
 */
export function storedReleaseVerifier(keyring: Keyring, siteKey: SigningKey | undefined): (r: Release) => Release {
  const siteRing = siteKey && createKeyring([publicPemOf(siteKey)], 1);
  return (r) => {
    if (!r.envelope) throw new Error(`release ${r.version} has no signed envelope`);
    let keyIds: string[];
    try {
      keyIds = verifyEnvelope(r.envelope, keyring);
    } catch (err) {
      if (!r.resignedBySite || !siteRing) throw err;
      keyIds = verifyEnvelope(r.envelope, siteRing);
    }
    const manifest = parseManifest(r.envelope.manifest);
    if (manifest.version !== r.version) throw new Error(`the record says ${r.version}, its signed manifest ${manifest.version}`);
    return { ...r, manifest, signedBy: keyIds };
  };
}

function sameImages(a: events.ReleaseManifest, b: events.ReleaseManifest): boolean {
  const key = (m: events.ReleaseManifest) => JSON.stringify(m.images.map((i) => events.BoardImage.toJSON(i)));
  return key(a) === key(b);
}

function checkVersion(v: string): void {
  if (!v) throw invalidArgument("version is required (e.g. v1.34.6)", CatalogCode.VERSION_INVALID);
  parseVersion(v);
}

function checkBoard(b: string): void {
  if (!BOARD_RE.test(b)) throw invalidArgument(`board "${truncate(b)}" must be 1-63 of [a-z0-9._-]`, "BOARD_INVALID");
}

function checkTarget(t: string): void {
  if (!t) throw invalidArgument("target is required: a version (v1.35.2), a minor (v1.35) or an alias (stable, latest)", CatalogCode.TARGET_INVALID);
  if (t.length > 64 || !(isVersion(t) || /^v\d+\.\d+$/.test(t) || ALIAS_RE.test(t))) {
    throw invalidArgument(`target "${truncate(t)}" is not a version (v1.35.2), a minor (v1.35) or an alias name`, CatalogCode.TARGET_INVALID);
  }
}

function checkReason(r: string): void {
  if (r.length > MAX_REASON) throw invalidArgument(`reason is longer than ${MAX_REASON} characters`, "REASON_INVALID");
}
