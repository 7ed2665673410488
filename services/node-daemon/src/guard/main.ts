// ferry-trial-guard: the host-level trial guard as a process (deploy/systemd/
// ferry-trial-guard.service runs it at every boot). It reads the node-daemon's own
// configuration variables for the bootloader, the boot state, the data partition and the
// reboot command; FERRY_TRIAL_GUARD_TIMEOUT_S (default 900) is used when the journal
// cannot be read, FERRY_TRIAL_GUARD_GRACE_S (default 120) is added to the timeout.
import { join } from "node:path";
import { ConfigError } from "@ferry/runtime";
import { createPlatform } from "../adapters/platform.ts";
import { loadConfig } from "../config.ts";
import { guardTrial } from "./trial-guard.ts";

const num = (name: string, def: number): number => {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new ConfigError([`${name}: "${raw}" is not a whole number of seconds`]);
  return n;
};

try {
  // The guard needs the board settings of the daemon, not its identity or keyring.
  const config = loadConfig({
    FERRY_NODE_NAME: "trial-guard",
    FERRY_BOARD: "any",
    FERRY_DATA_DIR: "/var/lib/ferry",
    FERRY_KEYRING_FILE: "/dev/null",
    ...process.env,
  });
  const platform = createPlatform(config, async () => undefined);
  const outcome = await guardTrial({
    bootloader: platform.bootloader,
    bootedSlot: () => platform.bootedSlot(),
    journalPath: join(config.dataDir, "journal.json"),
    defaultTimeoutSeconds: num("FERRY_TRIAL_GUARD_TIMEOUT_S", 900),
    graceSeconds: num("FERRY_TRIAL_GUARD_GRACE_S", 120),
    reboot: () => platform.reboot(),
    log: (msg) => process.stdout.write(`ferry-trial-guard: ${msg}\n`),
  });
  process.exitCode = outcome === "rebooted" ? 75 : 0;
} catch (err) {
  process.stderr.write(`ferry-trial-guard: ${err instanceof ConfigError ? err.message : (err as Error).stack}\n`);
  process.exitCode = 2;
}
