// Admin roles and the audit trail on the real services (planner, catalog, distributor,
// in-process on real gRPC and a real nats-server): every method of every service is called
// by a caller of each role and without credentials; each role can do exactly its calls
// (PERMISSION_DENIED otherwise, UNAUTHENTICATED without a credential), and every call that
// needs more than `viewer`, allowed or refused, is in the audit stream (ListAuditRecords)
// and in the service's log.
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { pino } from "pino";
import { catalog, distributor, planner } from "@ferry/proto";
import { allows, createClient, status, type GrpcCallError, type Need, type Role } from "@ferry/grpc";
import { createApp as createCatalog, loadConfig as catalogConfig } from "@ferry/catalog";
import { createApp as createDistributor, loadConfig as distributorConfig } from "@ferry/image-distributor";
import { waitFor } from "@ferry/testing";
import { Site } from "../services/planner/test/harness.ts";
import { PLANNER_ROLES } from "../services/planner/src/grpc/roles.ts";
import { CATALOG_ROLES } from "../services/catalog/src/grpc/roles.ts";
import { DISTRIBUTOR_ROLES } from "../services/image-distributor/src/grpc/roles.ts";

const ROLE_LIST: Role[] = ["viewer", "operator", "release", "admin"];
const token = (r: string) => `token-of-${r}-0123456789abcdef`;
const principals = JSON.stringify({
  principals: ROLE_LIST.map((r) => ({ name: `${r}-user`, roles: [r], tokenSha256: createHash("sha256").update(token(r)).digest("hex") })),
});
const security = { FERRY_GRPC_ROLES: principals, FERRY_GRPC_ALLOW_TOKEN_WITHOUT_TLS: "true" };

type Def = Record<string, { path: string; requestStream: boolean; responseStream: boolean; requestDeserialize: (b: Buffer) => unknown }>;

/** Calls `key` of `def` with an empty request; resolves to the status name it ended with. */
async function call(def: Def, addr: string, key: string, tok: string | undefined): Promise<string> {
  const c = createClient(def as never, addr, { ...(tok ? { token: tok } : {}), deadlineMs: 5000 }) as unknown as Record<
    string,
    (req: unknown) => unknown
  >;
  const m = def[key]!;
  const empty = m.requestDeserialize(Buffer.alloc(0));
  try {
    const r = c[key]!(m.requestStream ? [empty] : empty);
    if (m.responseStream) await (r as AsyncIterable<unknown>)[Symbol.asyncIterator]().next();
    else await r;
    return "OK";
  } catch (err) {
    return status[(err as GrpcCallError).code] ?? "?";
  } finally {
    (c as unknown as { close(): void }).close();
  }
}

describe("admin roles and audit", () => {
  it("each role can do exactly its calls on the planner, the catalog and the distributor; every mutating call is audited", async () => {
    await using site = await Site.start();
    const lines: Array<{ audit?: { principal: string; method: string; code: string; service: string } }> = [];
    const logger = pino({ level: "info" }, { write: (l: string) => void lines.push(JSON.parse(l) as (typeof lines)[number]) });
    const { addr: plannerAddr } = await site.planner(security);
    const cat = createCatalog(
      catalogConfig({
        FERRY_NATS_URL: site.nats.url,
        FERRY_GRPC_ADDR: "127.0.0.1:0",
        FERRY_KEYRING_FILE: site.keyring,
        FERRY_CATALOG_BUCKET: "ferry_catalog_roles",
        ...security,
      }),
      logger,
    );
    await cat.start();
    const dist = createDistributor(
      distributorConfig({
        FERRY_HTTP_ADDR: "127.0.0.1:0",
        FERRY_GRPC_ADDR: "127.0.0.1:0",
        FERRY_DISTRIBUTOR_DATA_DIR: `${site.dir.path}/cache`,
        FERRY_NATS_URL: site.nats.url,
        ...security,
      }),
      logger,
    );
    await dist.start();
    try {
      const services: Array<[string, Def, string, Record<string, Need>]> = [
        ["planner", planner.PlannerServiceService as unknown as Def, plannerAddr, PLANNER_ROLES],
        ["catalog", catalog.CatalogServiceService as unknown as Def, `127.0.0.1:${cat.port()}`, CATALOG_ROLES],
        ["distributor", distributor.DistributorServiceService as unknown as Def, `127.0.0.1:${dist.grpcPort()}`, DISTRIBUTOR_ROLES],
      ];
      const expected: Array<{ service: string; method: string; principal: string; code: string }> = [];
      for (const [service, def, addr, roles] of services) {
        for (const key of Object.keys(def)) {
          const need = roles[key]!;
          const path = def[key]!.path;
          expect(await call(def, addr, key, undefined), `${path} without credentials`).toBe("UNAUTHENTICATED");
          if (need !== "viewer") expected.push({ service, method: path, principal: "unknown", code: "UNAUTHENTICATED" });
          for (const r of ROLE_LIST) {
            const got = await call(def, addr, key, token(r));
            if (allows([r], need)) expect(["PERMISSION_DENIED", "UNAUTHENTICATED"], `${r} → ${path}`).not.toContain(got);
            else expect(got, `${r} → ${path}`).toBe("PERMISSION_DENIED");
            if (need !== "viewer") expected.push({ service, method: path, principal: `${r}-user`, code: got });
          }
        }
      }
      process.stderr.write(
        `roles: ${expected.length} audited calls expected, ${expected.filter((e) => e.code === "PERMISSION_DENIED").length} refused\n`,
      );
      // Every mutating call, allowed or not, is in the audit stream, with who and how it ended.
      const pc = createClient(planner.PlannerServiceService, plannerAddr, { token: token("viewer") });
      const key = (r: { service: string; method: string; principal: string; code: string }) => `${r.service} ${r.method} ${r.principal} ${r.code}`;
      let got: string[] = [];
      await waitFor(
        async () => {
          got = (await pc.listAuditRecords({ since: undefined, limit: 10_000, service: "", principal: "" })).records.map(key);
          return expected.every((e) => got.includes(key(e)));
        },
        { timeoutMs: 15_000, what: "every mutating call in the audit stream" },
      ).catch(() => expect(expected.map(key).filter((k) => !got.includes(k))).toEqual([]));
      const byOperator = await pc.listAuditRecords({ since: undefined, limit: 5, service: "catalog", principal: "operator-user" });
      expect(byOperator.records.length).toBe(5);
      expect(byOperator.records.every((r) => r.service === "catalog" && r.principal === "operator-user" && r.code === "PERMISSION_DENIED")).toBe(
        true,
      );
      pc.close();
      // The services' logs have the same records.
      expect(lines.filter((l) => l.audit?.service === "catalog").length).toBe(expected.filter((e) => e.service === "catalog").length);
      expect(lines.filter((l) => l.audit?.service === "distributor").length).toBe(expected.filter((e) => e.service === "distributor").length);
    } finally {
      await dist.stop(AbortSignal.timeout(3000));
      await cat.stop(AbortSignal.timeout(3000));
    }
  }, 120_000);
});
