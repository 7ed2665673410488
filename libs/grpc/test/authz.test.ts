// Roles on the gRPC server: principals by token (kept as sha256) and by mTLS client
// certificate CN, each method's role, the audit record of what changes or is refused, and
// FERRY_GRPC_ROLES parsing with a clear error for each mistake.
import { describe, expect, it } from "vitest";
import { createClient, loadGrpcSecurity, parseRoles, status, tokenSha256, type AuditRecord } from "@ferry/grpc";
import { tempDir } from "@ferry/testing";
import { DEF, expectCode, makePki, startServer, VIEW } from "./kit.ts";

const ROLES = { ...VIEW, evictBlob: "operator", pinBlob: "release" } as const;

describe("roles", () => {
  it("identifies callers by client certificate CN or token, lets each do exactly its calls, and audits what changes", async () => {
    using dir = tempDir();
    const pki = makePki(dir.path); // the client certificate's CN is "planner"
    const audit: AuditRecord[] = [];
    const s = await startServer(
      {
        tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.ca },
        principals: [
          { name: "planner-svc", roles: ["operator"], certCn: "planner" },
          { name: "alice", roles: ["release"], tokenSha256: tokenSha256("alice-token-0123456789") },
        ],
        audit: (r) => audit.push(r),
      },
      ROLES,
    );
    const addr = `localhost:${s.port}`;
    const byCert = createClient(DEF, addr, { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey, deadlineMs: 5000 });
    // The token wins over the certificate when both are sent.
    const byToken = createClient(DEF, addr, {
      ca: pki.ca,
      cert: pki.clientCert,
      key: pki.clientKey,
      token: "alice-token-0123456789",
      deadlineMs: 5000,
    });
    const wrongToken = createClient(DEF, addr, { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey, token: "nope", deadlineMs: 5000 });
    expect((await byCert.statBlob({ digest: "a" })).size).toBe(42); // viewer: any role
    await byCert.evictBlob({ digest: "a" }).catch(() => undefined); // operator: allowed (whatever the handler answers)
    await expectCode(
      byCert.pinBlob({ digest: "a", holder: "h" }),
      status.PERMISSION_DENIED,
      /planner-svc \(operator\) may not call PinBlob: it needs the release role/,
    );
    await expectCode(byToken.evictBlob({ digest: "a" }), status.PERMISSION_DENIED, /alice/);
    await byToken.pinBlob({ digest: "a", holder: "h" }).catch(() => undefined);
    await expectCode(wrongToken.statBlob({ digest: "a" }), status.UNAUTHENTICATED, /invalid bearer token/);
    expect(audit.map((r) => `${r.principal} ${r.method.split("/")[2]} ${r.code === "PERMISSION_DENIED" ? "denied" : "allowed"}`)).toEqual([
      "planner-svc EvictBlob allowed",
      "planner-svc PinBlob denied",
      "alice EvictBlob denied",
      "alice PinBlob allowed",
    ]);
    expect(audit[1]!.request).toBe('{"digest":"a","holder":"h"}');
    for (const c of [byCert, byToken, wrongToken]) c.close();
    await s.server.stop();
  });

  it("parses FERRY_GRPC_ROLES strictly, and checks it against the TLS settings", () => {
    const t = tokenSha256("x");
    expect(parseRoles(JSON.stringify({ principals: [{ name: "a", roles: ["viewer"], tokenSha256: t }] }))).toEqual([
      { name: "a", roles: ["viewer"], tokenSha256: t },
    ]);
    const bad: Array<[unknown, RegExp]> = [
      [{}, /must be \{"principals"/],
      [{ principals: [{ name: "", roles: ["viewer"], tokenSha256: t }] }, /name must be/],
      [{ principals: [{ name: "a", roles: ["root"], tokenSha256: t }] }, /roles must be a non-empty list of viewer, operator, release, admin/],
      [{ principals: [{ name: "a", roles: ["viewer"] }] }, /exactly one of tokenSha256, certCn/],
      [{ principals: [{ name: "a", roles: ["viewer"], tokenSha256: "the-token-itself" }] }, /never the token/],
      [
        {
          principals: [
            { name: "a", roles: ["viewer"], tokenSha256: t },
            { name: "a", roles: ["admin"], certCn: "x" },
          ],
        },
        /appears twice/,
      ],
      [
        {
          principals: [
            { name: "a", roles: ["viewer"], tokenSha256: t },
            { name: "b", roles: ["admin"], tokenSha256: t },
          ],
        },
        /same credential/,
      ],
    ];
    for (const [doc, err] of bad) expect(() => parseRoles(JSON.stringify(doc))).toThrow(err);
    expect(() => parseRoles("{not json")).toThrow(/not JSON/);
    const roles = JSON.stringify({ principals: [{ name: "a", roles: ["viewer"], tokenSha256: t }] });
    expect(() => loadGrpcSecurity({ FERRY_GRPC_ROLES: roles })).toThrow(/over plaintext would leak/);
    expect(loadGrpcSecurity({ FERRY_GRPC_ROLES: roles, FERRY_GRPC_ALLOW_TOKEN_WITHOUT_TLS: "true" }).principals).toHaveLength(1);
    const byCn = JSON.stringify({ principals: [{ name: "a", roles: ["viewer"], certCn: "a" }] });
    expect(() => loadGrpcSecurity({ FERRY_GRPC_ROLES: byCn })).toThrow(/FERRY_GRPC_TLS_CLIENT_CA/);
  });
});
