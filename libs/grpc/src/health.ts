// grpc.health.v1: per-service serving status, set by the service from its real readiness.
import { EventEmitter } from "node:events";
import { health } from "@ferry/proto";
import { StatusError, status } from "./status.ts";
import type { Implementation } from "./server.ts";

const ServingStatus = health.HealthCheckResponse_ServingStatus;
type ServingStatus = health.HealthCheckResponse_ServingStatus;

export class HealthStatus {
  readonly #statuses = new Map<string, ServingStatus>();
  readonly #events = new EventEmitter<{ change: [string, ServingStatus] }>();

  constructor(services: string[]) {
    // "" is the whole server. Everything starts NOT_SERVING until the service says so.
    for (const s of ["", ...services]) this.#statuses.set(s, ServingStatus.NOT_SERVING);
    this.#events.setMaxListeners(0);
  }

  /** Sets one service's status, or the whole server's and every service's when service is omitted. */
  set(serving: boolean, service?: string): void {
    const next = serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
    const names = service === undefined ? [...this.#statuses.keys()] : [service];
    for (const name of names) {
      if (this.#statuses.get(name) === next) continue;
      this.#statuses.set(name, next);
      this.#events.emit("change", name, next);
    }
  }

  get(service = ""): ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  implementation(): Implementation<typeof health.HealthService> {
    return {
      check: async (req) => {
        const s = this.#statuses.get(req.service);
        if (s === undefined) throw new StatusError(status.NOT_FOUND, `unknown service "${req.service}"`);
        return { status: s };
      },
      watch: (req, ctx) => this.#watch(req.service, ctx.signal),
    };
  }

  async *#watch(service: string, signal: AbortSignal): AsyncIterable<health.HealthCheckResponse> {
    const queue: ServingStatus[] = [this.#statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN];
    let wake: (() => void) | undefined;
    const onChange = (name: string, s: ServingStatus) => {
      if (name !== service) return;
      queue.push(s);
      wake?.();
    };
    const onAbort = () => wake?.();
    this.#events.on("change", onChange);
    signal.addEventListener("abort", onAbort);
    try {
      while (!signal.aborted) {
        const next = queue.shift();
        if (next !== undefined) {
          yield { status: next };
          continue;
        }
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    } finally {
      this.#events.off("change", onChange);
      signal.removeEventListener("abort", onAbort);
    }
  }
}
