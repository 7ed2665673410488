import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "@ferry/testing";
import { AtomicJsonFile, isTempPath, writeFileAtomic } from "../src/atomic-file.ts";

const here = new URL(".", import.meta.url).pathname;

describe("AtomicJsonFile", () => {
  it("reads nothing before the first write, then the last document written, leaving no temp files", async () => {
    using dir = tempDir();
    const f = new AtomicJsonFile<{ step: number }>(join(dir.path, "data", "journal.json"));
    expect(await f.read()).toBeUndefined();
    await Promise.all(Array.from({ length: 20 }, (_, i) => f.write({ step: i })));
    expect(await f.read()).toEqual({ step: 19 });
    expect(readdirSync(join(dir.path, "data"))).toEqual(["journal.json"]);
  });

  it("two documents in one directory written at once never take each other's content", async () => {
    using dir = tempDir();
    const a = new AtomicJsonFile<{ who: string; i: number }>(join(dir.path, "journal.json"));
    const b = new AtomicJsonFile<{ who: string; i: number }>(join(dir.path, "state.json"));
    for (let round = 0; round < 20; round++) {
      await Promise.all([a.write({ who: "journal", i: round }), b.write({ who: "state", i: round })]);
      expect(await a.read()).toEqual({ who: "journal", i: round });
      expect(await b.read()).toEqual({ who: "state", i: round });
    }
    expect(readdirSync(dir.path).sort()).toEqual(["journal.json", "state.json"]);
  });

  it("create() succeeds for exactly one of many concurrent callers", async () => {
    using dir = tempDir();
    const files = Array.from({ length: 8 }, () => new AtomicJsonFile<{ n: number }>(join(dir.path, "journal.json")));
    const results = await Promise.allSettled(files.map((f, n) => f.create({ n })));
    const won = results.flatMap((r, n) => (r.status === "fulfilled" ? [n] : []));
    expect(won).toHaveLength(1);
    expect(results.filter((r) => r.status === "rejected").map((r) => (r as PromiseRejectedResult).reason.code)).toEqual(Array(7).fill("EEXIST"));
    expect(await files[0]!.read()).toEqual({ n: won[0] });
    expect(readdirSync(dir.path)).toEqual(["journal.json"]);
  });

  it("a document that is not JSON is an error naming the file, not 'no document'", async () => {
    using dir = tempDir();
    await writeFileAtomic(join(dir.path, "state.json"), '{"torn');
    await expect(new AtomicJsonFile(join(dir.path, "state.json")).read()).rejects.toThrow(/state\.json is not JSON/);
  });

  it("kill -9 at random moments inside writes always leaves a whole document", async () => {
    using dir = tempDir();
    const path = join(dir.path, "doc.json");
    const writer = join(here, "atomic-writer.ts");
    let last = -1;
    for (let i = 0; i < 12; i++) {
      const child = spawn(process.execPath, [writer, path, String(last + 1)], { stdio: ["ignore", "pipe", "inherit"] });
      // Wait until it has written at least once, then kill it at a random point of a later write.
      await new Promise<void>((r) => child.stdout.once("data", () => r()));
      await new Promise((r) => setTimeout(r, 5 + Math.random() * 40));
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
      const doc = JSON.parse(readFileSync(path, "utf8")) as { n: number; pad: string };
      expect(doc.pad).toHaveLength(256 * 1024);
      expect(doc.n).toBeGreaterThan(last);
      last = doc.n;
    }
    // Interrupted writes may leave temp files; they are recognisable and never the document.
    for (const name of readdirSync(dir.path)) expect(name === "doc.json" || isTempPath(name)).toBe(true);
  });
});
