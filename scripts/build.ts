// Compiles every workspace package's src/**/*.ts to plain JavaScript in its dist/ (types
// removed, relative `.ts` imports rewritten to `.js`; no type check: `npm run typecheck`
// does that). Node runs the TypeScript sources directly in development and tests, but
// stripping types at run time loads a compiler of its own (about 17 MB of RSS per
// process), which a board cannot spare: the node-daemon runs from dist/ with
// `node --conditions=ferry-dist`, the condition each package's exports map to dist/.
// Run by `npm ci` (prepare, after gen) and `npm run build`.
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const packages = ["libs", "services"].flatMap((d) => readdirSync(join(root, d)).map((p) => join(root, d, p))).concat(join(root, "cli"));

const options: ts.CompilerOptions = {
  target: ts.ScriptTarget.ES2024,
  module: ts.ModuleKind.ESNext,
  verbatimModuleSyntax: true,
  rewriteRelativeImportExtensions: true,
  sourceMap: false,
  removeComments: false,
};

let files = 0;
for (const pkg of packages) {
  const src = join(pkg, "src");
  const dist = join(pkg, "dist");
  rmSync(dist, { recursive: true, force: true });
  let entries: string[];
  try {
    entries = readdirSync(src, { recursive: true, encoding: "utf8" });
  } catch {
    continue;
  }
  for (const entry of entries) {
    if (!entry.endsWith(".ts") || entry.endsWith(".d.ts")) continue;
    const from = join(src, entry);
    const out = ts.transpileModule(readFileSync(from, "utf8"), { compilerOptions: options, fileName: from, reportDiagnostics: true });
    if (out.diagnostics?.length) {
      const d = out.diagnostics[0]!;
      throw new Error(`${relative(root, from)}: ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`);
    }
    const to = join(dist, entry.replace(/\.ts$/, ".js"));
    mkdirSync(dirname(to), { recursive: true });
    writeFileSync(to, out.outputText);
    files++;
  }
}
process.stderr.write(`build: ${files} files compiled to dist/ in ${packages.length} packages\n`);
