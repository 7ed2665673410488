import { readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "@ferry/testing";
import { AtomicJsonFile } from "../src/adapters/journal.ts";

describe("AtomicJsonFile", () => {
  it("reads nothing before the first write, then the last document written, leaving no temp files", async () => {
    using dir = tempDir();
    const f = new AtomicJsonFile<{ step: number }>(join(dir.path, "data", "journal.json"));
    expect(await f.read()).toBeUndefined();
    await Promise.all(Array.from({ length: 20 }, (_, i) => f.write({ step: i })));
    expect(await f.read()).toEqual({ step: 19 });
    expect(readdirSync(join(dir.path, "data"))).toEqual(["journal.json"]);
  });

  it("a crash before the rename leaves the previous document intact", async () => {
    using dir = tempDir();
    const f = new AtomicJsonFile<{ step: number }>(join(dir.path, "journal.json"));
    await f.write({ step: 1 });
    writeFileSync(join(dir.path, ".999.1.tmp"), '{"step": 2, "torn'); // what a power cut mid-write leaves
    expect(await f.read()).toEqual({ step: 1 });
  });
});
