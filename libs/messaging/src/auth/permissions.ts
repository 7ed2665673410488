// Each component's NATS permissions, derived from the channel declarations (CHANNELS): who
// writes a bucket may publish its keys, who reads it may create consumers on it and get its
// values, who declares it may create and update its stream. A board's rights are narrowed to
// its own name: its own key in the nodes bucket, its own assignment key, its own event
// subjects. Nothing here is written twice: a new channel gets its rights from its declaration.
//
// Replies come to a per-user inbox prefix (`_INBOX_<user>`), so no user can subscribe to
// another's replies (KV gets, JetStream acks, consumer deliveries).
import { CHANNELS, type BucketChannel, type Component, type ServiceChannel, type StreamChannel } from "../channels.ts";
import { ADMISSION_SUBJECT_PREFIX, EVENTS_SUBJECT_PREFIX, encodeToken } from "../names.ts";

export interface NatsPermissions {
  /** Subjects the user may publish to. */
  pub: string[];
  /** Subjects the user may subscribe to. */
  sub: string[];
  /** The inbox prefix the user must connect with (its replies arrive under it). */
  inboxPrefix: string;
  /** Whether it answers requests (may publish to each request's reply subject, once). */
  responds: boolean;
}

/** Kubernetes node names (DNS-1123 subdomains): the only board names Ferry admits. */
const NODE_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** Throws unless `name` can be a board's name (a Kubernetes node name, at most 253 characters). */
export function checkNodeName(name: string): string {
  if (name.length === 0 || name.length > 253 || !NODE_NAME.test(name))
    throw new RangeError(
      `"${name.slice(0, 80)}" is not a node name: lowercase letters, digits, "-" and ".", at most 253 characters (a Kubernetes node name)`,
    );
  return name;
}

/** The inbox prefix of a component's user (a board's includes its name). */
export function inboxPrefix(component: Component, node?: string): string {
  return component === "node-daemon" ? `_INBOX_node_${encodeToken(node!)}` : `_INBOX_${component.replace(/-/g, "_")}`;
}

const API = "$JS.API";

/** Rights on a stream (a KV bucket's is KV_<bucket>): declare, read, consume. */
function streamRights(stream: string, o: { declare: boolean; read: "all" | string[]; consume: boolean }): string[] {
  const out: string[] = [`${API}.STREAM.INFO.${stream}`];
  if (o.declare) out.push(`${API}.STREAM.CREATE.${stream}`, `${API}.STREAM.UPDATE.${stream}`, `${API}.STREAM.PURGE.${stream}`);
  if (o.read === "all") {
    out.push(`${API}.DIRECT.GET.${stream}`, `${API}.DIRECT.GET.${stream}.>`, `${API}.STREAM.MSG.GET.${stream}`);
    // Consumers of any filter: ephemeral (the KV watchers, WatchUpgrade) and durable (the planner's).
    out.push(`${API}.CONSUMER.CREATE.${stream}`, `${API}.CONSUMER.CREATE.${stream}.>`, `${API}.CONSUMER.DURABLE.CREATE.${stream}.*`);
    out.push(`${API}.CONSUMER.INFO.${stream}.*`, `${API}.CONSUMER.DELETE.${stream}.*`, `${API}.CONSUMER.MSG.NEXT.${stream}.*`);
    out.push(`${API}.CONSUMER.NAMES.${stream}`, `${API}.CONSUMER.LIST.${stream}`);
  } else {
    // Only consumers filtered on these subjects (the server checks the filter in the API subject).
    for (const subject of o.read) {
      out.push(`${API}.DIRECT.GET.${stream}.${subject}`);
      out.push(`${API}.CONSUMER.CREATE.${stream}.*.${subject}`);
    }
  }
  if (o.consume) out.push(`$JS.ACK.${stream}.>`, `$JS.FC.${stream}.>`);
  return out;
}

function bucketRights(c: BucketChannel<unknown>, component: Component, node: string | undefined): string[] {
  const writes = c.writer === component;
  const reads = c.readers.includes(component);
  const declares = (c.declaredBy ?? c.writer) === component;
  if (!writes && !reads && !declares) return [];
  const stream = `KV_${c.bucket}`;
  const own = component === "node-daemon";
  const out = streamRights(stream, {
    declare: declares && !own,
    read: own ? [`$KV.${c.bucket}.${node}`] : "all",
    consume: reads || writes,
  });
  // The declarer may also delete keys (the planner forgets a decommissioned board's status).
  if (writes || declares) out.push(own ? `$KV.${c.bucket}.${node}` : `$KV.${c.bucket}.>`);
  return out;
}

function streamChannelRights(c: StreamChannel<unknown>, component: Component, node: string | undefined): string[] {
  const writes = c.writer === component;
  const reads = c.readers.includes(component);
  const declares = (c.declaredBy ?? c.writer) === component;
  if (!writes && !reads && !declares) return [];
  const out: string[] = [];
  if (reads || declares) out.push(...streamRights(c.stream, { declare: declares, read: reads ? "all" : [], consume: reads }));
  if (writes) {
    if (c.subjects === `${EVENTS_SUBJECT_PREFIX}.<upgrade>.<node>`)
      out.push(component === "node-daemon" ? `${EVENTS_SUBJECT_PREFIX}.*.${encodeToken(node!)}` : `${EVENTS_SUBJECT_PREFIX}.>`);
    else if (!c.subjects.includes("<"))
      out.push(c.subjects); // one literal subject (an audit channel)
    else throw new Error(`no publish rights derived for ${c.subjects}`);
  }
  return out;
}

function serviceRights(c: ServiceChannel<unknown>, component: Component): { pub: string[]; sub: string[] } {
  if (c.subjects !== `${ADMISSION_SUBJECT_PREFIX}.<node>`) throw new Error(`no rights derived for ${c.subjects}`);
  const all = `${ADMISSION_SUBJECT_PREFIX}.*`;
  return { pub: c.caller === component ? [all] : [], sub: c.responder === component ? [all] : [] };
}

/**
 * The permissions of a component's NATS user (a board's: `node` is its name). Derived from
 * CHANNELS: the only place that says who writes and who reads each subject.
 */
export function permissionsFor(component: Component, node?: string): NatsPermissions {
  if (component === "node-daemon") checkNodeName(node ?? "");
  else if (node !== undefined) throw new Error(`only a board's user is scoped to a node (got ${component} for ${node})`);
  const inbox = inboxPrefix(component, node);
  const pub = new Set<string>(component === "join" ? [] : [`${API}.INFO`]);
  const sub = new Set<string>([`${inbox}.>`]);
  let responds = false;
  for (const c of Object.values(CHANNELS) as Array<BucketChannel<unknown> | StreamChannel<unknown> | ServiceChannel<unknown>>) {
    if (c.kind === "service") {
      const r = serviceRights(c, component);
      r.pub.forEach((s) => pub.add(s));
      r.sub.forEach((s) => sub.add(s));
      responds ||= r.sub.length > 0;
      continue;
    }
    const rights = c.kind === "bucket" ? bucketRights(c, component, node) : streamChannelRights(c, component, node);
    for (const r of rights) pub.add(r);
  }
  return { pub: [...pub].sort(), sub: [...sub], inboxPrefix: inbox, responds };
}
