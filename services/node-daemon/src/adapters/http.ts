// undici's request API on an undici Agent, loaded without undici's index. The index also
// loads fetch, WebSocket, EventSource, the cache and mock agents, which the daemon never
// uses and which cost it ~5 MB of RSS on a board (bench:node-daemon). These two modules
// are undici's own Agent and request(); their paths are pinned by the undici major in
// package.json, and the slot-writer tests exercise them.
import { createRequire } from "node:module";
import type { Dispatcher } from "undici";

const require = createRequire(import.meta.url);
const Agent = require("undici/lib/dispatcher/agent.js") as new () => Dispatcher;
const apiRequest = require("undici/lib/api/api-request.js") as (
  this: Dispatcher,
  opts: Dispatcher.RequestOptions,
) => Promise<Dispatcher.ResponseData>;

let agent: Dispatcher | undefined;

export type RequestOptions = Omit<Dispatcher.RequestOptions, "origin" | "path" | "method"> & { method?: Dispatcher.HttpMethod };

/** undici's `request(url, options)`, on the daemon's own Agent. */
export function request(url: string, opts: RequestOptions = {}): Promise<Dispatcher.ResponseData> {
  const u = new URL(url);
  agent ??= new Agent();
  return apiRequest.call(agent, { ...opts, origin: u.origin, path: `${u.pathname}${u.search}`, method: opts.method ?? "GET" });
}
