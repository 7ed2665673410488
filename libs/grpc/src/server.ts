// The gRPC server every Ferry service uses: async handlers (unary, server-, client- and
// bidi-streaming) with an AbortSignal, one error→status mapping, default deadlines,
// message size limits, optional TLS/mTLS with a private CA, callers' roles per method
// (authz.ts) and an audit record of every call that changes something (audit.ts),
// grpc.health.v1 and server reflection (v1 and v1alpha) from the real descriptors.
import {
  Server,
  ServerCredentials,
  status,
  type Metadata,
  type ServerDuplexStream,
  type ServerReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type sendUnaryData,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import { descriptorSetBytes, health, reflectionV1, reflectionV1alpha } from "@ferry/proto";
import type { Logger } from "@ferry/runtime";
import { HealthStatus } from "./health.ts";
import { ReflectionIndex } from "./reflection.ts";
import { StatusError, toStatus } from "./status.ts";
import { Authorizer, type MethodRoles, type Need, type PrincipalSpec } from "./authz.ts";
import type { AuditRecord } from "./audit.ts";
import { CallGate } from "./call-gate.ts";

export interface CallContext {
  /** Aborted when the client cancels, the deadline passes or the server shuts down. */
  signal: AbortSignal;
  metadata: Metadata;
  peer: string;
  /** Full method path, e.g. /ferry.catalog.v1.CatalogService/FindPath. */
  method: string;
}

type AnyMethod = {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestDeserialize: (b: Buffer) => unknown;
  responseSerialize: (v: never) => Buffer;
};

type HandlerFor<M> = M extends {
  requestStream: infer RS;
  responseStream: infer SS;
  requestDeserialize: (b: Buffer) => infer Req;
  responseSerialize: (v: infer Res) => Buffer;
}
  ? RS extends true
    ? SS extends true
      ? (reqs: AsyncIterable<Req>, ctx: CallContext) => AsyncIterable<Res>
      : (reqs: AsyncIterable<Req>, ctx: CallContext) => Promise<Res>
    : SS extends true
      ? (req: Req, ctx: CallContext) => AsyncIterable<Res>
      : (req: Req, ctx: CallContext) => Promise<Res>
  : never;

/** A typed implementation of a ts-proto grpc-js service definition. */
export type Implementation<D> = { [K in keyof D]: HandlerFor<D[K]> };

export interface TlsOptions {
  /** PEM of the server certificate chain and its key. */
  cert: Buffer;
  key: Buffer;
  /** PEM of the private CA that signs client certificates. When set, clients must present one (mTLS). */
  clientCa?: Buffer | undefined;
}

export interface GrpcServerOptions {
  logger: Logger;
  /** host:port; port 0 picks a free port (see `port` after start). */
  address: string;
  tls?: TlsOptions | undefined;
  /** A single bearer token (an admin); `principals` gives each caller its own roles. */
  token?: string | undefined;
  /**
   * Callers and their roles (FERRY_GRPC_ROLES). With none and no token, every caller may do
   * everything (an open server: a loopback-only board or a demo).
   */
  principals?: readonly PrincipalSpec[] | undefined;
  /** Called after each call of a method that needs more than `viewer` (and each refused call). */
  audit?: (r: AuditRecord) => void;
  /** Deadline applied to unary and client-streaming calls that set none or a longer one. */
  defaultDeadlineMs?: number;
  maxReceiveMessageBytes?: number;
  maxSendMessageBytes?: number;
  /** Serve reflection (on by default: operators use grpcurl). */
  reflection?: boolean;
  /** Called as each call ends, with its method path and status name ("OK", "NOT_FOUND", ...): for metrics. */
  onCall?: (method: string, code: string) => void;
}

export const DEFAULTS = {
  defaultDeadlineMs: 30_000,
  maxReceiveMessageBytes: 4 * 1024 * 1024,
  maxSendMessageBytes: 16 * 1024 * 1024,
};

export class GrpcServer {
  readonly health: HealthStatus;
  #server: Server;
  #opts: GrpcServerOptions;
  #services: string[] = [];
  #shutdown = new AbortController();
  #port = 0;
  readonly #gate: CallGate;

  constructor(opts: GrpcServerOptions) {
    this.#opts = opts;
    this.#gate = new CallGate(new Authorizer(opts.principals ?? [], opts.token), opts.audit);
    this.#server = new Server({
      "grpc.max_receive_message_length": opts.maxReceiveMessageBytes ?? DEFAULTS.maxReceiveMessageBytes,
      "grpc.max_send_message_length": opts.maxSendMessageBytes ?? DEFAULTS.maxSendMessageBytes,
      "grpc.max_concurrent_streams": 1000,
      "grpc.keepalive_time_ms": 60_000,
      "grpc.keepalive_timeout_ms": 20_000,
    });
    this.health = new HealthStatus([]);
    this.#addRaw(health.HealthService, this.health.implementation(), "grpc.health.v1.Health");
    if (opts.reflection !== false) {
      const impl = ReflectionIndex.lazy(descriptorSetBytes, () => this.#services);
      this.#addRaw(reflectionV1.ServerReflectionService, impl, "grpc.reflection.v1.ServerReflection");
      this.#addRaw(
        reflectionV1alpha.ServerReflectionService,
        impl as unknown as Implementation<typeof reflectionV1alpha.ServerReflectionService>,
        "grpc.reflection.v1alpha.ServerReflection",
      );
    }
  }

  /**
   * Registers a service with the role each of its methods needs; its health status starts
   * NOT_SERVING until `health.set(true)`.
   */
  add<D extends Record<string, AnyMethod>>(definition: D, impl: Implementation<D>, roles: { readonly [K in keyof D]: Need }): this {
    const first = Object.values(definition)[0];
    if (!first) throw new Error("service definition has no methods");
    const name = first.path.split("/")[1] ?? "";
    for (const [key, method] of Object.entries(definition)) {
      const role = (roles as MethodRoles)[key];
      if (!role) throw new Error(`${name}: no role for ${key}`);
      this.#gate.need(method.path, role);
    }
    this.#addRaw(definition, impl, name);
    this.health.set(false, name);
    return this;
  }

  get port(): number {
    return this.#port;
  }

  async start(): Promise<number> {
    const { tls } = this.#opts;
    const creds = tls
      ? ServerCredentials.createSsl(
          // Never null: with a null root, grpc-js would trust the public CA bundle.
          tls.clientCa ?? null,
          [{ cert_chain: tls.cert, private_key: tls.key }],
          tls.clientCa !== undefined,
        )
      : ServerCredentials.createInsecure();
    this.#port = await new Promise<number>((resolve, reject) => {
      this.#server.bindAsync(this.#opts.address, creds, (err, port) => (err ? reject(err) : resolve(port)));
    });
    return this.#port;
  }

  /**
   * Graceful stop: reports NOT_SERVING, ends open streams, waits for in-flight calls
   * until `signal` aborts, then forces.
   */
  async stop(signal?: AbortSignal): Promise<void> {
    this.health.set(false);
    this.#shutdown.abort(new StatusError(status.UNAVAILABLE, "server is shutting down"));
    await new Promise<void>((resolve) => {
      const force = () => {
        this.#server.forceShutdown();
        resolve();
      };
      if (signal?.aborted) return force();
      signal?.addEventListener("abort", force, { once: true });
      this.#server.tryShutdown(() => {
        signal?.removeEventListener("abort", force);
        resolve();
      });
    });
  }

  #addRaw<D>(definition: D, impl: Implementation<D>, name: string): void {
    const wrapped: UntypedServiceImplementation = {};
    for (const [key, method] of Object.entries(definition as Record<string, AnyMethod>)) {
      const handler = (impl as Record<string, unknown>)[key];
      if (typeof handler !== "function") throw new Error(`${name}: no handler for ${key}`);
      wrapped[key] = this.#wrap(method, handler as (...args: unknown[]) => unknown);
    }
    this.#server.addService(definition as unknown as ServiceDefinition, wrapped);
    if (!name.startsWith("grpc.")) this.#services.push(name);
  }

  /** Builds the call context: signal aborted on cancel, deadline or shutdown. */
  #context(
    call: { metadata: Metadata; getPeer(): string; getDeadline(): Date | number; on(e: "cancelled", f: () => void): unknown },
    method: AnyMethod,
  ): { ctx: CallContext; done: () => void } {
    const ac = new AbortController();
    const onShutdown = () => ac.abort(this.#shutdown.signal.reason);
    this.#shutdown.signal.addEventListener("abort", onShutdown, { once: true });
    call.on("cancelled", () => ac.abort(new StatusError(status.CANCELLED, "cancelled by the client")));
    let timer: NodeJS.Timeout | undefined;
    if (!method.responseStream) {
      const max = this.#opts.defaultDeadlineMs ?? DEFAULTS.defaultDeadlineMs;
      const d = call.getDeadline();
      const requested = d instanceof Date ? d.getTime() - Date.now() : Number.isFinite(d) ? d - Date.now() : Infinity;
      const ms = Math.max(0, Math.min(requested, max));
      timer = setTimeout(() => ac.abort(new StatusError(status.DEADLINE_EXCEEDED, `deadline of ${ms} ms exceeded`)), ms);
    }
    return {
      ctx: { signal: ac.signal, metadata: call.metadata, peer: call.getPeer(), method: method.path },
      done: () => {
        clearTimeout(timer);
        this.#shutdown.signal.removeEventListener("abort", onShutdown);
      },
    };
  }

  #fail(method: string, err: unknown, signal: AbortSignal, end?: (code: string) => void) {
    // An aborted call reports why it was aborted, not what the handler threw while unwinding.
    const cause = signal.aborted && signal.reason instanceof StatusError ? signal.reason : err;
    const mapped = toStatus(cause);
    this.#opts.onCall?.(method, status[mapped.error.code] ?? String(mapped.error.code));
    end?.(status[mapped.error.code] ?? String(mapped.error.code));
    if (mapped.unexpected) this.#opts.logger.error({ err: cause, method }, "unexpected error in handler");
    else this.#opts.logger.debug({ method, code: status[mapped.error.code], details: mapped.error.details }, "call failed");
    return mapped.error;
  }

  #wrap(method: AnyMethod, handler: (...args: unknown[]) => unknown) {
    const path = method.path;
    if (!method.requestStream && !method.responseStream) {
      return (call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>) => {
        const { ctx, done } = this.#context(call, method);
        let end: ((code: string) => void) | undefined;
        void (async () => {
          try {
            end = this.#gate.enter(path, call, call.request);
            const res = await race(handler(call.request, ctx) as Promise<unknown>, ctx.signal);
            cb(null, res);
            this.#opts.onCall?.(path, "OK");
            end?.("OK");
          } catch (err) {
            cb(this.#fail(path, err, ctx.signal, end));
          } finally {
            done();
          }
        })();
      };
    }
    if (!method.requestStream && method.responseStream) {
      return (call: ServerWritableStream<unknown, unknown>) => {
        const { ctx, done } = this.#context(call, method);
        let end: ((code: string) => void) | undefined;
        void (async () => {
          try {
            end = this.#gate.enter(path, call, call.request);
            for await (const item of handler(call.request, ctx) as AsyncIterable<unknown>) {
              if (ctx.signal.aborted) break;
              if (!call.write(item)) await waitDrain(call, ctx.signal);
            }
            if (ctx.signal.aborted) throw ctx.signal.reason;
            call.end();
            this.#opts.onCall?.(path, "OK");
            end?.("OK");
          } catch (err) {
            if (!call.cancelled) call.emit("error", this.#fail(path, err, ctx.signal, end));
          } finally {
            done();
          }
        })();
      };
    }
    if (method.requestStream && !method.responseStream) {
      return (call: ServerReadableStream<unknown, unknown>, cb: sendUnaryData<unknown>) => {
        const { ctx, done } = this.#context(call, method);
        let end: ((code: string) => void) | undefined;
        void (async () => {
          try {
            end = this.#gate.enter(path, call, undefined);
            const res = await race(handler(call as AsyncIterable<unknown>, ctx) as Promise<unknown>, ctx.signal);
            cb(null, res);
            this.#opts.onCall?.(path, "OK");
            end?.("OK");
          } catch (err) {
            cb(this.#fail(path, err, ctx.signal, end));
          } finally {
            done();
          }
        })();
      };
    }
    return (call: ServerDuplexStream<unknown, unknown>) => {
      const { ctx, done } = this.#context(call, method);
      let end: ((code: string) => void) | undefined;
      void (async () => {
        try {
          end = this.#gate.enter(path, call, undefined);
          for await (const item of handler(call as AsyncIterable<unknown>, ctx) as AsyncIterable<unknown>) {
            if (ctx.signal.aborted) break;
            if (!call.write(item)) await waitDrain(call, ctx.signal);
          }
          if (ctx.signal.aborted) throw ctx.signal.reason;
          call.end();
          this.#opts.onCall?.(path, "OK");
          end?.("OK");
        } catch (err) {
          if (!call.cancelled) call.emit("error", this.#fail(path, err, ctx.signal, end));
        } finally {
          done();
        }
      })();
    };
  }
}

/** Rejects with the signal's reason as soon as it aborts, even if the handler ignores it. */
function race<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e as Error);
      },
    );
  });
}

function waitDrain(stream: NodeJS.EventEmitter, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const finish = () => {
      stream.off("drain", finish);
      signal.removeEventListener("abort", finish);
      resolve();
    };
    stream.once("drain", finish);
    signal.addEventListener("abort", finish, { once: true });
  });
}
