// NATS names: KV buckets (one per owner, who is its only writer), the events stream,
// and subject builders. docs/ARCHITECTURE.md lists the same table.

/** KV buckets and their single writer. */
export const BUCKETS = {
  /** releases, aliases, blocked edges: written by the catalog only. */
  catalog: "ferry_catalog",
  /** node status heartbeats, key = node name: each node-daemon writes its own key. */
  nodes: "ferry_nodes",
  /** per-node assignment, key = node name: written by the planner only. */
  assignments: "ferry_assignments",
  /** rollout state, reboot lock, leader lease: written by the planner only. */
  planner: "ferry_planner",
} as const;

/** Step events from node-daemons: `ferry.events.<upgrade_id>.<node token>`. */
export const EVENTS_STREAM = "FERRY_EVENTS";
export const EVENTS_SUBJECT_PREFIX = "ferry.events";

/** The audit trail: `ferry.audit.<service>` (each service writes its own subject). */
export const AUDIT_STREAM = "FERRY_AUDIT";
export const AUDIT_SUBJECT_PREFIX = "ferry.audit";

/** Admission requests: `ferry.admission.join.<node token>`. */
export const ADMISSION_SUBJECT_PREFIX = "ferry.admission.join";

export function admissionSubject(node: string): string {
  return `${ADMISSION_SUBJECT_PREFIX}.${encodeToken(node)}`;
}

/** The reserved upgrade id of manual installs (NodeService.Install). */
export const MANUAL_UPGRADE_ID = "manual";

const SAFE = /^[A-Za-z0-9_-]$/;

/**
 * Encodes any string as one NATS subject token: [A-Za-z0-9_-] stay, every other UTF-8
 * byte (".", "*", ">", "~", spaces...) becomes "~XX". Reversible; "" becomes "~".
 */
export function encodeToken(s: string): string {
  if (s === "") return "~";
  let out = "";
  for (const ch of s) {
    if (SAFE.test(ch)) out += ch;
    else for (const b of Buffer.from(ch, "utf8")) out += `~${b.toString(16).padStart(2, "0")}`;
  }
  return out;
}

export function decodeToken(token: string): string {
  if (token === "~") return "";
  const bytes: number[] = [];
  for (let i = 0; i < token.length;) {
    if (token[i] === "~") {
      const hex = token.slice(i + 1, i + 3);
      if (!/^[0-9a-f]{2}$/.test(hex)) throw new Error(`bad token escape at ${i} in "${token}"`);
      bytes.push(parseInt(hex, 16));
      i += 3;
    } else {
      bytes.push(token.charCodeAt(i));
      i += 1;
    }
  }
  return Buffer.from(bytes).toString("utf8");
}

export function eventSubject(upgradeId: string, node: string): string {
  return `${EVENTS_SUBJECT_PREFIX}.${encodeToken(upgradeId)}.${encodeToken(node)}`;
}

/** The upgrade and node a step event's subject names (undefined: not an event subject). */
export function parseEventSubject(subject: string): { upgradeId: string; node: string } | undefined {
  const parts = subject.split(".");
  if (parts.length !== 4 || `${parts[0]}.${parts[1]}` !== EVENTS_SUBJECT_PREFIX) return undefined;
  try {
    return { upgradeId: decodeToken(parts[2]!), node: decodeToken(parts[3]!) };
  } catch {
    return undefined;
  }
}

/** Subject filter for all events of one upgrade (or of all upgrades when omitted). */
export function eventFilter(upgradeId?: string): string {
  return upgradeId === undefined ? `${EVENTS_SUBJECT_PREFIX}.>` : `${EVENTS_SUBJECT_PREFIX}.${encodeToken(upgradeId)}.*`;
}

/** Nats-Msg-Id of a step event: `<node>:<seq>`. */
export function eventMsgId(node: string, seq: number): string {
  return `${node}:${seq}`;
}
