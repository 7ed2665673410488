// Generates TypeScript from proto/ (ts-proto, via buf; offline) into libs/proto/gen and
// writes the FileDescriptorSet buf builds (with imports and source info) next to it, for
// server reflection. Run by `npm ci` (prepare) and `npm run gen`.
import { execFileSync } from "node:child_process";
import { rmSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name: string) => join(root, "node_modules", ".bin", name);
const out = join(root, "libs", "proto", "gen");

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const run = (args: string[]) => execFileSync(bin("buf"), args, { cwd: join(root, "proto"), stdio: "inherit" });
run(["generate", "--template", "buf.gen.yaml"]);
run(["build", "-o", join(out, "descriptors.binpb")]);
