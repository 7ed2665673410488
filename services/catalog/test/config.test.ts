import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError } from "@ferry/runtime";
import { tempDir } from "@ferry/testing";
import { loadConfig } from "../src/config.ts";

describe("catalog config", () => {
  it("applies defaults and reads files", () => {
    using dir = tempDir();
    const ring = join(dir.path, "ring.json");
    writeFileSync(ring, "{}");
    const c = loadConfig({ FERRY_KEYRING_FILE: ring });
    expect(c).toMatchObject({ natsUrl: "nats://127.0.0.1:4222", grpcAddr: "0.0.0.0:7401", logLevel: "info", bucket: "ferry_catalog", replicas: 1 });
    expect(c.security).toEqual({ tls: undefined, token: undefined, principals: [] });
  });

  it("names every bad variable and what to set, in one error", () => {
    let err: ConfigError | undefined;
    try {
      loadConfig({
        FERRY_NATS_URL: "http://x",
        FERRY_GRPC_ADDR: "nope",
        FERRY_LOG_LEVEL: "loud",
        FERRY_NATS_REPLICAS: "7",
        FERRY_SITE_KEY_FILE: "/does/not/exist",
      });
    } catch (e) {
      err = e as ConfigError;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const text = err!.problems.join("\n");
    expect(text).toMatch(/FERRY_NATS_URL must use nats or tls/);
    expect(text).toMatch(/FERRY_GRPC_ADDR must be host:port, got "nope"/);
    expect(text).toMatch(/FERRY_LOG_LEVEL must be one of fatal, error/);
    expect(text).toMatch(/FERRY_NATS_REPLICAS must be between 1 and 5/);
    expect(text).toMatch(/FERRY_SITE_KEY_FILE cannot read file "\/does\/not\/exist": ENOENT/);
    expect(text).toMatch(/FERRY_KEYRING_FILE is required/);
  });

  it("refuses a bearer token over plaintext unless explicitly allowed", () => {
    using dir = tempDir();
    const ring = join(dir.path, "ring.json");
    writeFileSync(ring, "{}");
    expect(() => loadConfig({ FERRY_KEYRING_FILE: ring, FERRY_GRPC_TOKEN: "t" })).toThrow(
      /bearer tokens \(FERRY_GRPC_TOKEN, FERRY_GRPC_ROLES\) over plaintext would leak/,
    );
    expect(loadConfig({ FERRY_KEYRING_FILE: ring, FERRY_GRPC_TOKEN: "t", FERRY_GRPC_ALLOW_TOKEN_WITHOUT_TLS: "true" }).security.token).toBe("t");
    expect(() => loadConfig({ FERRY_KEYRING_FILE: ring, FERRY_GRPC_TLS_CERT: ring })).toThrow(/must be set together/);
  });
});
