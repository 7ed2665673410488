// Test helper process: writes ever larger sequence numbers to one document with
// AtomicJsonFile until it is killed, printing a line after the first write.
import { AtomicJsonFile } from "../src/atomic-file.ts";

const [path, start] = process.argv.slice(2) as [string, string];
const f = new AtomicJsonFile<{ n: number; pad: string }>(path);
const pad = "x".repeat(256 * 1024);
for (let n = Number(start); ; n++) {
  await f.write({ n, pad });
  if (n === Number(start)) process.stdout.write("written\n");
}
