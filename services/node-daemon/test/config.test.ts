// The daemon's configuration: labels for selectors, and clear errors for bad input.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { tempDir } from "@ferry/testing";
import { loadConfig } from "../src/config.ts";

describe("node-daemon config", () => {
  const dir = tempDir("ferry-nd-config-");
  afterAll(() => dir[Symbol.dispose]());
  const keyring = join(dir.path, "keyring.json");
  writeFileSync(keyring, "{}");
  const base = {
    FERRY_NODE_NAME: "n1",
    FERRY_BOARD: "b",
    FERRY_DATA_DIR: dir.path,
    FERRY_KEYRING_FILE: keyring,
    FERRY_SLOT_A: "a",
    FERRY_SLOT_B: "b",
  };

  it("parses FERRY_NODE_LABELS", () => {
    expect(loadConfig({ ...base, FERRY_NODE_LABELS: "site=berlin, zone=a,ferry.dev/rack=r1" }).labelMap).toEqual({
      site: "berlin",
      zone: "a",
      "ferry.dev/rack": "r1",
    });
    expect(loadConfig(base).labelMap).toEqual({});
  });

  it("names the bad variable", () => {
    expect(() => loadConfig({ ...base, FERRY_NODE_LABELS: "site" })).toThrow(/FERRY_NODE_LABELS: "site" is not key=value/);
    expect(() => loadConfig({ ...base, FERRY_HEALTH_CHECKS: "{" })).toThrow(/FERRY_HEALTH_CHECKS is not a JSON list/);
  });
});
