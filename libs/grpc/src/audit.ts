// The audit record of a call that changes something: who (the principal), what (the method
// and a bounded summary of its request: bytes are counted, never copied, long strings cut),
// when, from where, and how it ended. Services send these to their log and to NATS
// (libs/messaging's audit channel).
import { events } from "@ferry/proto";
import type { Logger } from "@ferry/runtime";

export interface AuditRecord {
  time: Date;
  /** Full method path, /ferry.planner.v1.PlannerService/CreateUpgrade. */
  method: string;
  principal: string;
  peer: string;
  /** JSON summary of the request ("(stream)" for client-streamed requests). */
  request: string;
  /** The status the call ended with: OK, PERMISSION_DENIED, ... */
  code: string;
  ms: number;
}

const MAX_SUMMARY = 2048;
const MAX_STRING = 200;
const MAX_DEPTH = 4;
const MAX_ITEMS = 20;

/** A bounded JSON summary of a request message. */
export function summarize(request: unknown): string {
  if (request === undefined) return "(stream)";
  const text = JSON.stringify(shrink(request, 0));
  return text.length > MAX_SUMMARY ? `${text.slice(0, MAX_SUMMARY)}…` : text;
}

function shrink(v: unknown, depth: number): unknown {
  if (v instanceof Uint8Array) return `<${v.length} bytes>`;
  if (v instanceof Date) return v.toISOString();
  if (typeof v === "string") return v.length > MAX_STRING ? `${v.slice(0, MAX_STRING)}…` : v;
  if (typeof v !== "object" || v === null) return v;
  if (depth >= MAX_DEPTH) return "…";
  if (Array.isArray(v)) {
    const items = v.slice(0, MAX_ITEMS).map((x) => shrink(x, depth + 1));
    return v.length > MAX_ITEMS ? [...items, `… ${v.length - MAX_ITEMS} more`] : items;
  }
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    // Defaults say nothing: proto3 zero values are left out.
    if (x === "" || x === 0 || x === false || x === undefined || (Array.isArray(x) && x.length === 0)) continue;
    out[k] = shrink(x, depth + 1);
  }
  return out;
}

/**
 * The `audit` option of a service's GrpcServer: each record goes to the service's log (one
 * "audit" line) and, as an events.v1.AuditRecord, to `publish` (its AuditSink in NATS).
 */
export function auditTo(service: string, log: Logger, publish?: (r: events.AuditRecord) => void): (r: AuditRecord) => void {
  return (r) => {
    log.info({ audit: { service, ...r, time: r.time.toISOString() } }, `audit: ${r.principal} ${r.method.split("/")[2]} ${r.code}`);
    publish?.(events.AuditRecord.fromPartial({ ...r, service, ms: Math.min(r.ms, 2 ** 32 - 1) }));
  };
}
