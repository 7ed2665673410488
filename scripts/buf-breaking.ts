// Checks that finished proto contracts only change additively: `buf breaking` against
// the proto/ folder of a git ref (default main), read from the local repository, offline.
//   npm run buf:breaking [-- <ref>]
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const ref = process.argv[2] ?? "main";
try {
  execFileSync(join(root, "node_modules", ".bin", "buf"), ["breaking", "proto", "--against", `.git#ref=${ref},subdir=proto`], {
    cwd: root,
    stdio: "inherit",
  });
  console.log(`proto contracts are compatible with ${ref}`);
} catch {
  process.exitCode = 1;
}
