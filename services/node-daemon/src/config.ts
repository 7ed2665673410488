import { ConfigError, LOG_LEVELS, readConfig, v, type Env } from "@ferry/runtime";
import { loadGrpcSecurity, type GrpcSecurity } from "@ferry/grpc";

const vars = {
  node: v.string("FERRY_NODE_NAME", "this node's name (the Kubernetes node name)"),
  board: v.string("FERRY_BOARD", "board id images are chosen by, e.g. ls1046a"),
  arch: v.string("FERRY_ARCH", "CPU architecture", "arm64"),
  role: v.enumOf("FERRY_ROLE", "Kubernetes role of this node", ["control-plane", "worker"] as const, "worker"),
  dataDir: v.string("FERRY_DATA_DIR", "directory on the persistent data partition (journal, state, outbox), never in an A/B slot"),
  metricsTextfile: v.string(
    "FERRY_METRICS_TEXTFILE",
    'node_exporter textfile with step durations and outcomes (default: <FERRY_DATA_DIR>/metrics/ferry-node-daemon.prom; "off": none)',
    "",
  ),
  natsUrl: v.url("FERRY_NATS_URL", "NATS server URL(s)", ["nats", "tls"], "nats://127.0.0.1:4222"),
  natsCreds: v.optionalString(
    "FERRY_NATS_CREDS",
    "this board's NATS credentials (`ferry nodes enroll`); empty: <FERRY_DATA_DIR>/nats.creds once admitted, or none without FERRY_NATS_JOIN_CREDS",
  ),
  natsJoinCreds: v.optionalString(
    "FERRY_NATS_JOIN_CREDS",
    "the site's join credentials: a board without its own asks to be admitted with a key it makes on first start",
  ),
  grpcAddr: v.addr("FERRY_GRPC_ADDR", "local NodeService listen address", "127.0.0.1:7404"),
  logLevel: v.enumOf("FERRY_LOG_LEVEL", "log level", LOG_LEVELS, "info"),
  keyringFile: v.file("FERRY_KEYRING_FILE", "keyring JSON of the release signers this node trusts (and the planner's assignment keys)", false),
  plannerKeysFile: v.file(
    "FERRY_PLANNER_KEYS_FILE",
    "PEM public key(s) of the planner's assignment key (`ferry site init`'s planner.pub), added to the keyring's planner keys",
  ),
  distributorUrl: v.string("FERRY_DISTRIBUTOR_URL", "base URL of the site image-distributor (http://host:7480)", ""),
  slotA: v.string("FERRY_SLOT_A", "path of slot A (partition or file)"),
  slotB: v.string("FERRY_SLOT_B", "path of slot B (partition or file)"),
  slotKind: v.enumOf(
    "FERRY_SLOT_KIND",
    "what the slots are: block devices (a board), or regular files (only a simulated board); anything else is refused before any write",
    ["block", "file"] as const,
    "block",
  ),
  bootStateFile: v.string("FERRY_BOOT_STATE_FILE", "file the initramfs writes with BOOT_PART=A|B", "/run/monok8s/boot-state.env"),
  bootIdFile: v.string("FERRY_BOOT_ID_FILE", "file naming this boot of the OS", "/proc/sys/kernel/random/boot_id"),
  bootloader: v.enumOf("FERRY_BOOTLOADER", "bootloader environment", ["uboot", "grub"] as const, "uboot"),
  ubootConfig: v.string("FERRY_UBOOT_CONFIG", "fw_env.config describing the U-Boot environment", "/etc/fw_env.config"),
  ubootDefaultEnv: v.optionalString("FERRY_UBOOT_DEFAULT_ENV", "default U-Boot environment file for fw_setenv -f"),
  fwPrintenv: v.string("FERRY_FW_PRINTENV", "fw_printenv binary", "fw_printenv"),
  fwSetenv: v.string("FERRY_FW_SETENV", "fw_setenv binary", "fw_setenv"),
  toolLibraryPath: v.string("FERRY_TOOL_LD_LIBRARY_PATH", "LD_LIBRARY_PATH for the bootloader tools", ""),
  grubEditenv: v.string("FERRY_GRUB_EDITENV", "grub-editenv binary", "grub-editenv"),
  grubenv: v.string("FERRY_GRUBENV", "grubenv file", "/boot/grub/grubenv"),
  rebootCmd: v.string("FERRY_REBOOT_CMD", 'command that reboots the board; "exit" makes the daemon exit 75 for a boot simulator', "systemctl reboot"),
  postBootCmd: v.string("FERRY_POST_BOOT_CMD", "shell command run after booting a new version; {version} and {role} are replaced", ""),
  healthChecks: v.string(
    "FERRY_HEALTH_CHECKS",
    'JSON list of checks: [{"cmd": "...", "timeoutMs": 5000} | {"http": "http://...", "timeoutMs": 5000}]',
    "[]",
  ),
  osVersion: v.optionalString(
    "FERRY_OS_VERSION",
    "the version the running OS image ships (seeds the committed version before the first Ferry install)",
  ),
  osReleaseFile: v.string(
    "FERRY_OS_RELEASE_FILE",
    "os-release of the running OS; its VERSION_ID is the anti-rollback floor when FERRY_OS_VERSION is unset",
    "/etc/os-release",
  ),
  heartbeatMs: v.int("FERRY_HEARTBEAT_MS", "status heartbeat interval", 5000, 100),
  labels: v.string("FERRY_NODE_LABELS", 'labels reported with the heartbeat for upgrade selectors, "k=v,k2=v2"', ""),
};

export type Config = ReturnType<typeof readConfig<typeof vars>> & { security: GrpcSecurity; labelMap: Record<string, string> };

export function loadConfig(env: Env = process.env): Config {
  const c = readConfig(vars, env);
  const labelMap: Record<string, string> = {};
  for (const kv of c.labels.split(",").filter((x) => x.trim())) {
    const m = /^\s*([A-Za-z0-9][-A-Za-z0-9_./]*)=([-A-Za-z0-9_.]*)\s*$/.exec(kv);
    if (!m) throw new ConfigError([`FERRY_NODE_LABELS: "${kv}" is not key=value (keys and values of [A-Za-z0-9-_./])`]);
    labelMap[m[1]!] = m[2]!;
  }
  try {
    const checks = JSON.parse(c.healthChecks) as unknown;
    if (!Array.isArray(checks)) throw new Error("not a list");
  } catch (err) {
    throw new ConfigError([`FERRY_HEALTH_CHECKS is not a JSON list: ${(err as Error).message}`]);
  }
  return { ...c, security: loadGrpcSecurity(env), labelMap };
}
