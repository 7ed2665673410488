// The boot simulator of a simulated board, as a process: it powers the board on (only
// what U-Boot does at power-on, on the real environment file), then starts the
// node-daemon as "the booted OS". When the daemon asks to reboot (exit code 75) it
// power-cycles and starts it again; when the daemon dies otherwise it restarts it, as
// systemd would (except after a configuration error, exit 2). SIGTERM stops both.
//   FERRY_SIM_DIR              the board's directory (slots, env file, run/boot-state.env)
//   FERRY_SIM_INITIAL_VERSION  version in slot A when the board is created (default v1.33.5)
//   FERRY_SIM_TOOLS            JSON from scripts/ensure-bootloader-tools.sh (else it is run)
//   everything else is passed to the daemon (FERRY_NODE_NAME, FERRY_NATS_URL, ...)
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { osImage, SimBoard, type BootloaderTools } from "./board.ts";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..", "..", "..");
const dir = process.env.FERRY_SIM_DIR;
if (!dir) {
  process.stderr.write("FERRY_SIM_DIR is required: the simulated board's directory\n");
  process.exit(2);
}
const tools = JSON.parse(
  process.env.FERRY_SIM_TOOLS ??
    execFileSync(join(root, "scripts/ensure-bootloader-tools.sh"), { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }),
) as BootloaderTools & { grubEditenv: string };
const board = existsSync(join(dir, "fw_env.config"))
  ? SimBoard.open(dir, tools)
  : await SimBoard.create(dir, tools, osImage(process.env.FERRY_SIM_INITIAL_VERSION ?? "v1.33.5", "healthy", 256 * 1024));

let child: ChildProcess | undefined;
let stopping = false;
const env = {
  ...process.env,
  FERRY_SLOT_A: board.slotPath("A"),
  FERRY_SLOT_B: board.slotPath("B"),
  FERRY_SLOT_KIND: "file",
  FERRY_BOOT_STATE_FILE: join(dir, "run", "boot-state.env"),
  FERRY_BOOT_ID_FILE: join(dir, "run", "boot-id"),
  FERRY_BOOTLOADER: "uboot",
  FERRY_UBOOT_CONFIG: join(dir, "fw_env.config"),
  FERRY_UBOOT_DEFAULT_ENV: join(dir, "default.env"),
  FERRY_FW_PRINTENV: tools.fwPrintenv,
  FERRY_FW_SETENV: tools.fwSetenv,
  FERRY_TOOL_LD_LIBRARY_PATH: tools.ldLibraryPath,
  FERRY_REBOOT_CMD: "exit",
  FERRY_OS_VERSION: process.env.FERRY_SIM_INITIAL_VERSION ?? "v1.33.5",
  // The simulated OS is healthy when its image's marker says so.
  FERRY_HEALTH_CHECKS: JSON.stringify([
    { cmd: `. '${join(dir, "run", "boot-state.env")}' && head -c 80 "$ROOT_DEV" | head -n 1 | grep -q ' healthy$'`, timeoutMs: 5000 },
  ]),
};

function log(msg: string, extra: Record<string, unknown> = {}) {
  process.stdout.write(`${JSON.stringify({ level: "info", service: "sim-board", time: new Date().toISOString(), msg, ...extra })}\n`);
}

async function boot(): Promise<void> {
  const slot = await board.powerOn();
  log("booted", { slot, powerOns: board.powerOns });
  startDaemon();
}

function startDaemon(): void {
  // The daemon as a board starts it: its launcher (compiled JavaScript, runtime settings).
  child = spawn(join(root, "bin/ferry-service"), ["node-daemon"], {
    env: { ...env, FERRY_NODE: process.execPath },
    stdio: ["ignore", "inherit", "inherit"],
  });
  writeFileSync(join(dir!, "daemon.pid"), String(child.pid));
  child.once("exit", (code, signal) => {
    if (stopping) return;
    if (code === 75) {
      log("reboot requested");
      void boot();
    } else if (code === 2) {
      // A configuration error: restarting cannot help (systemd's RestartPreventExitStatus).
      log("daemon refused its configuration; stopping");
      process.exit(2);
    } else {
      log("daemon died; restarting it", { code, signal });
      setTimeout(startDaemon, 200);
    }
  });
}

for (const sig of ["SIGTERM", "SIGINT"] as const) {
  process.on(sig, () => {
    stopping = true;
    child?.kill("SIGTERM");
    setTimeout(() => process.exit(0), 3000).unref();
    child?.once("exit", () => process.exit(0));
    if (!child || child.exitCode !== null) process.exit(0);
  });
}

await boot();
