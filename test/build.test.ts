// npm run build (run by vitest's global setup): every workspace package's exports resolve
// under the ferry-dist condition to compiled files that exist, and no compiled file
// imports TypeScript, so `node --conditions=ferry-dist` (the node-daemon's launcher) never
// loads Node's type stripper.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { repoRoot } from "@ferry/testing";

const packages = ["libs", "services"].flatMap((d) => readdirSync(join(repoRoot, d)).map((p) => join(repoRoot, d, p)));

describe("npm run build", () => {
  it("maps every export of every package to dist/ under ferry-dist, and to src/ otherwise", () => {
    for (const pkg of packages) {
      const { exports } = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8")) as { exports: Record<string, Record<string, string>> };
      for (const [sub, target] of Object.entries(exports)) {
        expect(Object.keys(target), `${pkg} ${sub}`).toEqual(["ferry-dist", "default"]);
        expect(target["ferry-dist"], `${pkg} ${sub}`).toMatch(/^\.\/dist\/.+\.js$/);
        expect(target.default, `${pkg} ${sub}`).toBe(target["ferry-dist"]!.replace("./dist/", "./src/").replace(/\.js$/, ".ts"));
        expect(existsSync(join(pkg, target["ferry-dist"]!)), `${pkg} ${sub} → ${target["ferry-dist"]}`).toBe(true);
        expect(existsSync(join(pkg, target.default!)), `${pkg} ${sub} → ${target.default}`).toBe(true);
      }
    }
  });

  it("compiles every source file and leaves no import of a .ts file", () => {
    let files = 0;
    for (const pkg of packages.concat(join(repoRoot, "cli"))) {
      const src = join(pkg, "src");
      if (!existsSync(src)) continue;
      for (const f of readdirSync(src, { recursive: true, encoding: "utf8" }).filter((x) => x.endsWith(".ts"))) {
        const js = join(pkg, "dist", f.replace(/\.ts$/, ".js"));
        expect(existsSync(js), js).toBe(true);
        const text = readFileSync(js, "utf8");
        expect(text, js).not.toMatch(/(from|import\()\s*["'][^"']+\.ts["']/);
        files++;
      }
    }
    expect(files).toBeGreaterThan(50);
  });
});
