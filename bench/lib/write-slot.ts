// One slot write by the node-daemon's writer, in its own process so its peak RSS is its
// own. Usage: node bench/lib/write-slot.ts <url> <slot> <active> <spec json>
// Prints {"writeMs", "verifyMs", "writeRssMb" (peak after the write), "peakRssMb" (after verify too)}.
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { readBackVerify, writeSlot, type ImageSpec } from "../../services/node-daemon/src/adapters/slot-writer.ts";

const [url, slot, active, specJson] = process.argv.slice(2);
const spec = JSON.parse(specJson!) as ImageSpec;
if (!existsSync(active!)) writeFileSync(active!, "active");
const t0 = performance.now();
await writeSlot({ urls: [url!], image: spec, slotPath: slot!, activeSlotPath: active! });
const writeMs = performance.now() - t0;
const hwm = () => Math.round(Number(/VmHWM:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? 0) / 1024);
const writeRssMb = hwm();
const t1 = performance.now();
await readBackVerify(slot!, spec.rawSize, spec.rawSha256);
const verifyMs = performance.now() - t1;
process.stdout.write(`${JSON.stringify({ writeMs, verifyMs, writeRssMb, peakRssMb: hwm() })}\n`);
