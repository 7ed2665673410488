// Generates code from proto/ (ts-proto, via buf; offline), compiles it to JavaScript with
// type declarations in libs/proto/gen — services then load plain JS: stripping the types
// of the large generated files at run time would cost tens of MB of RSS — and writes the
// FileDescriptorSet buf builds (with imports and source info) next to it, for server
// reflection. Run by `npm ci` (prepare) and `npm run gen`.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name: string) => join(root, "node_modules", ".bin", name);
const lib = join(root, "libs", "proto");
const out = join(lib, "gen");
const src = join(lib, "gen-src");

for (const d of [out, src]) rmSync(d, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const buf = (args: string[]) => execFileSync(bin("buf"), args, { cwd: join(root, "proto"), stdio: "inherit" });
buf(["generate", "--template", "buf.gen.yaml"]);
buf(["build", "-o", join(out, "descriptors.binpb")]);
execFileSync(bin("tsc"), ["-p", join(lib, "tsconfig.gen.json")], { stdio: "inherit" });
rmSync(src, { recursive: true, force: true });
