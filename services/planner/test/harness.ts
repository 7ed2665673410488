// A site for planner tests: a real nats-server, the real catalog (in process, real gRPC
// on port 0) with signed releases, the planner, and the fast simulated fleet.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createApp as createCatalog, loadConfig as catalogConfig } from "@ferry/catalog";
import { createApp as createPlanner, loadConfig as plannerConfig } from "@ferry/planner";
import { SimFleet, type FleetBoard, type FleetOptions } from "@ferry/node-daemon/sim";
import { catalog, events, planner } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { connectNats, ensureEventsStream, EVENTS_STREAM, type NatsConnection } from "@ferry/messaging";
import { jetstreamManager } from "@nats-io/jetstream";
import { expect } from "vitest";
import { encodeManifest } from "@ferry/release";
import { createLogger, type App } from "@ferry/runtime";
import { formatKeyringJson, generateKeyPair, loadSigningKey, parseKeyringJson, signEnvelope, type Keyring } from "@ferry/signing";
import { NatsServer, placeholderManifest, tempDir, waitFor } from "@ferry/testing";

export const BOARD = "ls1046a";

export const plannerClient = (addr: string) => createClient(planner.PlannerServiceService, addr);

export interface SiteOptions {
  releases?: string[];
  /** Give the catalog a site key (for trusted imports). */
  siteKey?: boolean;
  plannerEnv?: Record<string, string>;
}

/** NATS + catalog with releases; start planners and fleets on it. */
export class Site implements AsyncDisposable {
  readonly dir = tempDir("ferry-planner-");
  nats!: NatsServer;
  nc!: NatsConnection;
  catalogAddr = "";
  readonly #apps: App[] = [];
  readonly #fleets: SimFleet[] = [];
  readonly keyring = join(this.dir.path, "keyring.json");
  /** The planner's assignment key (FERRY_PLANNER_KEY_FILE); the keyring lists it under "planner". */
  readonly plannerKey = join(this.dir.path, "planner.key");
  /** The boards' keyring, parsed (the fleets verify assignments with it). */
  boardKeyring!: Keyring;

  static async start(o: SiteOptions = {}): Promise<Site> {
    const s = new Site();
    s.nats = await NatsServer.start();
    s.nc = await connectNats({ url: s.nats.url, name: "test" });
    await ensureEventsStream(s.nc);
    const kp = generateKeyPair();
    const pk = generateKeyPair();
    writeFileSync(s.plannerKey, pk.privatePem);
    writeFileSync(s.keyring, formatKeyringJson([kp.publicPem], 1, [pk.publicPem]));
    s.boardKeyring = parseKeyringJson(formatKeyringJson([kp.publicPem], 1, [pk.publicPem]));
    const siteKey = join(s.dir.path, "site.key");
    if (o.siteKey) writeFileSync(siteKey, generateKeyPair().privatePem);
    const cat = await s.catalog(o.siteKey ? { FERRY_SITE_KEY_FILE: siteKey } : {});
    s.catalogAddr = `127.0.0.1:${cat.port()}`;
    const c = createClient(catalog.CatalogServiceService, s.catalogAddr);
    const key = loadSigningKey(kp.privatePem);
    for (const v of o.releases ?? ["v1.33.4", "v1.33.7", "v1.34.2", "v1.34.5", "v1.35.1"])
      await c.publishRelease({ envelope: signEnvelope(encodeManifest(placeholderManifest(v)), [key]) });
    c.close();
    return s;
  }

  /** Starts a catalog on the site's NATS with its keyring (stopped with the site). */
  async catalog(env: Record<string, string> = {}) {
    const cat = createCatalog(
      catalogConfig({ FERRY_NATS_URL: this.nats.url, FERRY_GRPC_ADDR: "127.0.0.1:0", FERRY_KEYRING_FILE: this.keyring, ...env }),
      createLogger("catalog", "silent"),
    );
    await cat.start();
    this.#apps.push(cat);
    return cat;
  }

  async planner(env: Record<string, string> = {}, over: Parameters<typeof createPlanner>[2] = {}) {
    const app = createPlanner(
      plannerConfig({
        FERRY_NATS_URL: this.nats.url,
        FERRY_GRPC_ADDR: "127.0.0.1:0",
        FERRY_CATALOG_ADDR: this.catalogAddr,
        FERRY_PLANNER_KEY_FILE: this.plannerKey,
        FERRY_PLANNER_LEASE_MS: "600",
        FERRY_NODE_OFFLINE_SECONDS: "3",
        ...env,
      }),
      createLogger("planner", (process.env.FERRY_TEST_LOG as "info" | undefined) ?? "silent"),
      over,
    );
    await app.start();
    this.#apps.push(app);
    await waitFor(() => app.isLeader() && app.controller() !== undefined, { what: "the planner to lead" });
    return { app, addr: `127.0.0.1:${app.port()}`, client: plannerClient(`127.0.0.1:${app.port()}`) };
  }

  async fleet(boards: FleetBoard[], o: Partial<FleetOptions> = {}): Promise<SimFleet> {
    const f = new SimFleet(this.nc, boards, { heartbeatMs: 1000, keyring: this.boardKeyring, ...o });
    await f.start();
    this.#fleets.push(f);
    return f;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const f of this.#fleets) f.stop();
    for (const a of this.#apps.reverse()) await a.stop(AbortSignal.timeout(2000)).catch(() => undefined);
    await this.nc.close().catch(() => undefined);
    await this.nats[Symbol.asyncDispose]();
    this.dir[Symbol.dispose]();
  }
}

export const boards = (n: number, o: { cp?: number; version?: string; behaviour?: (i: number) => FleetBoard["behaviour"] } = {}): FleetBoard[] =>
  Array.from({ length: n }, (_, i) => ({
    name: i < (o.cp ?? 1) ? `cp-${i}` : `worker-${i}`,
    board: BOARD,
    role: i < (o.cp ?? 1) ? ("control-plane" as const) : ("worker" as const),
    version: o.version ?? "v1.33.4",
    behaviour: o.behaviour?.(i) ?? "healthy",
  }));

const { StepName: S, StepState: T } = events;

/** The events of one upgrade, in stream order. */
export async function allEvents(site: { nc: NatsConnection }, upgradeId: string): Promise<events.StepEvent[]> {
  const jsm = await jetstreamManager(site.nc);
  const info = await jsm.streams.info(EVENTS_STREAM);
  const out: events.StepEvent[] = [];
  for (let s = info.state.first_seq; s <= info.state.last_seq && info.state.messages > 0; s++) {
    const m = await jsm.streams.getMessage(EVENTS_STREAM, { seq: s }).catch(() => null);
    if (!m) continue;
    const e = events.StepEvent.decode(m.data);
    if (e.upgradeId === upgradeId) out.push(e);
  }
  return out;
}

/**
 * Checks the skew rule over the event order: per hop phase, control plane first, one at a
 * time. A hop starts with the node's first event of that hop (its target is taken from
 * any event of the hop: a daemon's first events may not name it yet).
 */
export function checkPhases(evs: events.StepEvent[], cps: Set<string>, startMinor = 33): void {
  const minor = (v: string) => Number(v.split(".")[1]);
  const hop = (e: events.StepEvent) => `${e.node}/${e.hopIndex}`;
  const target = new Map<string, number>();
  for (const e of evs) if (e.toVersion) target.set(hop(e), minor(e.toVersion));
  const committed = new Map<string, number>([...cps].map((c) => [c, startMinor])); // node → minor committed
  const inFlightCp = new Set<string>();
  const started = new Set<string>();
  for (const e of evs) {
    const m = target.get(hop(e))!;
    if (!started.has(hop(e))) {
      started.add(hop(e));
      if (cps.has(e.node)) {
        expect(inFlightCp.size, `${e.node} started while ${[...inFlightCp].join(",")} in flight`).toBe(0);
        inFlightCp.add(e.node);
        // No control-plane node starts minor m+1 before every control-plane node has m.
        for (const c of cps) if (c !== e.node) expect(committed.get(c)!, `${e.node} → v1.${m} while ${c} lags`).toBeGreaterThanOrEqual(m - 1);
      } else {
        for (const c of cps) expect(committed.get(c)!, `worker ${e.node} → v1.${m} before ${c}`).toBeGreaterThanOrEqual(m);
      }
    }
    if (e.step === S.STEP_NAME_REPORT && (e.state === T.STEP_STATE_SUCCEEDED || e.state === T.STEP_STATE_FAILED)) {
      inFlightCp.delete(e.node);
      if (e.state === T.STEP_STATE_SUCCEEDED) committed.set(e.node, m);
    }
  }
}

/** Every node's events reached the stream: sequences 1..n without a gap. */
export async function checkNoEventLost(site: { nc: NatsConnection }): Promise<void> {
  const jsm = await jetstreamManager(site.nc);
  const info = await jsm.streams.info(EVENTS_STREAM);
  const seqs = new Map<string, number[]>();
  for (let s = info.state.first_seq; s <= info.state.last_seq; s++) {
    const m = await jsm.streams.getMessage(EVENTS_STREAM, { seq: s }).catch(() => null);
    if (!m) continue;
    const e = events.StepEvent.decode(m.data);
    seqs.set(e.node, [...(seqs.get(e.node) ?? []), e.seq]);
  }
  for (const [node, s] of seqs) expect(s, node).toEqual(Array.from({ length: s.length }, (_, i) => i + 1));
}

/** Polls an upgrade until `pred` holds; on timeout the error shows its phase and every node. */
export const untilUpgrade = async (
  client: ReturnType<typeof createClient<typeof planner.PlannerServiceService>>,
  id: string,
  pred: (u: planner.Upgrade) => boolean,
  timeoutMs = 120_000,
) => {
  let last: planner.Upgrade | undefined;
  return waitFor(
    async () => {
      last = await client.getUpgrade({ id });
      return pred(last) ? last : undefined;
    },
    { timeoutMs, intervalMs: 250, what: `upgrade ${id}` },
  ).catch((err: Error) => {
    const nodes = last?.progress.map((g) => `${g.node} ${planner.nodeRunStateToJSON(g.runState)} hop ${g.hopIndex} ${g.message}`).join("; ");
    throw new Error(`${err.message}: ${last ? `${planner.upgradePhaseToJSON(last.phase)} ${last.message}: ${nodes}` : "never read"}`);
  });
};
