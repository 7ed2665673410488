import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { health, reflectionV1alpha } from "@ferry/proto";
import { createClient, status } from "@ferry/grpc";
import { ReflectionClient } from "@ferry/grpc/reflection-client";
import { tempDir, waitFor } from "@ferry/testing";
import { Client, credentials, Metadata } from "@grpc/grpc-js";
import { DEF, expectCode, makePki, startServer } from "./kit.ts";

describe("GrpcServer (plaintext)", () => {
  let s: Awaited<ReturnType<typeof startServer>>;
  let c: ReturnType<typeof createClient<typeof DEF>>;
  beforeAll(async () => {
    s = await startServer();
    c = createClient(DEF, `127.0.0.1:${s.port}`);
  });
  afterAll(async () => {
    c.close();
    await s.server.stop();
  });

  it("serves unary calls", async () => {
    expect((await c.statBlob({ digest: "abc" })).size).toBe(42);
  });

  it("maps each error kind to its status and keeps the stable error code", async () => {
    const e = await expectCode(
      c.statBlob({ digest: "missing" }),
      status.NOT_FOUND,
      /^DistributorService\/StatBlob: NOT_FOUND: blob missing is not cached$/,
    );
    expect(e.errorCode).toBe("BLOB_NOT_FOUND");
    await expectCode(c.statBlob({ digest: "bad" }), status.INVALID_ARGUMENT);
    await expectCode(c.statBlob({ digest: "dup" }), status.ALREADY_EXISTS);
    await expectCode(c.statBlob({ digest: "pre" }), status.FAILED_PRECONDITION);
  });

  it("turns an unexpected error into INTERNAL without leaking it, and logs it once", async () => {
    const before = s.seen.internalLogged;
    const e = await expectCode(c.statBlob({ digest: "boom" }), status.INTERNAL);
    expect(e.details).toBe("internal error");
    expect(s.seen.internalLogged).toBe(before + 1);
  });

  it("streams server-side: every item in order, then a clean end", async () => {
    const got: number[] = [];
    for await (const p of c.prefetch({ digest: "d", size: 5, sources: [], pinHolder: "" })) got.push(p.bytesDone);
    expect(got).toEqual([1, 2, 3, 4, 5]);
  });

  it("ends a server stream with the handler's status after the items already sent", async () => {
    const got: number[] = [];
    const e = await expectCode(
      (async () => {
        for await (const p of c.prefetch({ digest: "fail-at-3", size: 5, sources: [], pinHolder: "" })) got.push(p.bytesDone);
      })(),
      status.FAILED_PRECONDITION,
      /upstream went away/,
    );
    expect(got).toEqual([1, 2]);
    expect(e.errorCode).toBe("UPSTREAM_FAILED");
  });

  it("aborts the handler's signal when the client cancels a stream", async () => {
    const ac = new AbortController();
    const it = c.prefetch({ digest: "slow", size: 1000, sources: [], pinHolder: "" }, { signal: ac.signal })[Symbol.asyncIterator]();
    await it.next();
    ac.abort();
    await waitFor(() => s.seen.aborted.includes("prefetch"), { what: "handler to see the cancel" });
  });

  it("streams client-side", async () => {
    const res = await c.importBlob([
      { header: { digest: "x", size: 6, localPath: "" } },
      { chunk: Buffer.from("abc") },
      { chunk: Buffer.from("def") },
    ]);
    expect(res.size).toBe(6);
  });

  it("applies the default deadline to a call that sets none, and aborts the handler", async () => {
    const t0 = Date.now();
    await expectCode(c.listBlobs({}, { deadlineMs: 3_600_000 }), status.DEADLINE_EXCEEDED, /deadline of 300 ms exceeded/);
    expect(Date.now() - t0).toBeLessThan(5000);
    await waitFor(() => s.seen.aborted.includes("listBlobs"));
  });

  it("honours a shorter client deadline, including zero", async () => {
    await expectCode(c.listBlobs({}, { deadlineMs: 0 }), status.DEADLINE_EXCEEDED);
  });

  it("refuses a message over the receive limit with RESOURCE_EXHAUSTED", async () => {
    await expectCode(c.registerBlob({ digest: "x".repeat(70 * 1024), size: 1, sources: [] }), status.RESOURCE_EXHAUSTED);
  });

  it("reports health: SERVING, NOT_FOUND for an unknown service, and streams changes", async () => {
    const h = createClient(health.HealthService, `127.0.0.1:${s.port}`);
    expect((await h.check({ service: "" })).status).toBe(health.HealthCheckResponse_ServingStatus.SERVING);
    expect((await h.check({ service: "ferry.distributor.v1.DistributorService" })).status).toBe(health.HealthCheckResponse_ServingStatus.SERVING);
    await expectCode(h.check({ service: "nope" }), status.NOT_FOUND);
    const ac = new AbortController();
    const seen: number[] = [];
    const watching = (async () => {
      try {
        for await (const r of h.watch({ service: "ferry.distributor.v1.DistributorService" }, { signal: ac.signal })) seen.push(r.status);
      } catch {
        // cancelled
      }
    })();
    await waitFor(() => seen.length === 1);
    s.server.health.set(false, "ferry.distributor.v1.DistributorService");
    await waitFor(() => seen.length === 2);
    s.server.health.set(true, "ferry.distributor.v1.DistributorService");
    await waitFor(() => seen.length === 3);
    expect(seen).toEqual([1, 2, 1]);
    ac.abort();
    await watching;
    h.close();
  });

  it("answers reflection the way grpcurl uses it: list, describe, call with JSON", async () => {
    const r = new ReflectionClient(`127.0.0.1:${s.port}`);
    const services = await r.listServices();
    expect(services).toEqual(
      expect.arrayContaining([
        "ferry.distributor.v1.DistributorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
      ]),
    );
    const methods = await r.describe("ferry.distributor.v1.DistributorService");
    expect(methods.map((m) => m.name).sort()).toEqual([
      "EvictBlob",
      "GetStats",
      "ImportBlob",
      "ListBlobs",
      "PinBlob",
      "Prefetch",
      "RegisterBlob",
      "StatBlob",
      "UnpinBlob",
    ]);
    expect(methods.find((m) => m.name === "Prefetch")).toMatchObject({ serverStreaming: true, input: "ferry.distributor.v1.PrefetchRequest" });
    expect(await r.invoke("ferry.distributor.v1.DistributorService", "StatBlob", { digest: "abc" })).toMatchObject({ digest: "abc", size: "42" });
    await expect(r.invoke("ferry.distributor.v1.DistributorService", "StatBlob", { digest: "missing" })).rejects.toThrow(/NOT_FOUND/);
    r.close();
  });

  it("answers reflection v1alpha too (older grpcurl)", async () => {
    const client = new Client(`127.0.0.1:${s.port}`, credentials.createInsecure());
    const call = client.makeBidiStreamRequest(
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      (v: reflectionV1alpha.ServerReflectionRequest) => Buffer.from(reflectionV1alpha.ServerReflectionRequest.encode(v).finish()),
      (b: Buffer) => reflectionV1alpha.ServerReflectionResponse.decode(b),
      new Metadata(),
    );
    const res = new Promise<reflectionV1alpha.ServerReflectionResponse>((resolve) => call.once("data", resolve));
    call.write(reflectionV1alpha.ServerReflectionRequest.fromPartial({ fileContainingSymbol: "ferry.distributor.v1.DistributorService.Prefetch" }));
    const r = await res;
    call.on("error", () => {});
    call.end();
    call.cancel();
    client.close();
    // The file first, then its dependencies (google/protobuf/timestamp.proto).
    expect(r.fileDescriptorResponse!.fileDescriptorProto.length).toBe(2);
  });
});

describe("GrpcServer security", () => {
  it("requires the bearer token on every call but health checks", async () => {
    const s = await startServer({ token: "s3cret" });
    const addr = `127.0.0.1:${s.port}`;
    const none = createClient(DEF, addr);
    const wrong = createClient(DEF, addr, { token: "nope" });
    const right = createClient(DEF, addr, { token: "s3cret" });
    await expectCode(none.statBlob({ digest: "a" }), status.UNAUTHENTICATED, /missing credentials/);
    await expectCode(wrong.statBlob({ digest: "a" }), status.UNAUTHENTICATED, /invalid bearer token/);
    expect((await right.statBlob({ digest: "a" })).size).toBe(42);
    const h = createClient(health.HealthService, addr);
    expect((await h.check({ service: "" })).status).toBe(health.HealthCheckResponse_ServingStatus.SERVING);
    for (const x of [none, wrong, right, h]) x.close();
    await s.server.stop();
  });

  it("with mTLS, accepts only clients holding a certificate from the private CA", async () => {
    using dir = tempDir();
    const pki = makePki(dir.path);
    const s = await startServer({ tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.ca } });
    const addr = `localhost:${s.port}`;
    const good = createClient(DEF, addr, { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey, deadlineMs: 5000 });
    expect((await good.statBlob({ digest: "a" })).size).toBe(42);
    const noCert = createClient(DEF, addr, { ca: pki.ca, deadlineMs: 5000 });
    await expectCode(noCert.statBlob({ digest: "a" }), status.UNAVAILABLE);
    const foreign = createClient(DEF, addr, { ca: pki.ca, cert: pki.otherClientCert, key: pki.otherClientKey, deadlineMs: 5000 });
    await expectCode(foreign.statBlob({ digest: "a" }), status.UNAVAILABLE);
    const plaintext = createClient(DEF, addr, { deadlineMs: 2000 });
    await expect(plaintext.statBlob({ digest: "a" })).rejects.toThrow();
    for (const x of [good, noCert, foreign, plaintext]) x.close();
    await s.server.stop();
  });

  it("ends open streams with UNAVAILABLE on stop", async () => {
    const s = await startServer();
    const c = createClient(DEF, `127.0.0.1:${s.port}`);
    const it = c.prefetch({ digest: "slow", size: 100_000, sources: [], pinHolder: "" })[Symbol.asyncIterator]();
    await it.next();
    const stopped = s.server.stop(AbortSignal.timeout(5000));
    await expectCode(
      (async () => {
        for (;;) if ((await it.next()).done) break;
      })(),
      status.UNAVAILABLE,
      /shutting down/,
    );
    await stopped;
    c.close();
  });
});
