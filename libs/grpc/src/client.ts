// Typed promise/async-iterator clients over ts-proto grpc-js service definitions.
import {
  Metadata,
  credentials,
  makeGenericClientConstructor,
  status,
  type CallOptions,
  type ChannelCredentials,
  type Client,
  type ClientDuplexStream,
  type ClientReadableStream,
  type ClientWritableStream,
  type ServiceDefinition,
  type ServiceError,
} from "@grpc/grpc-js";
import { ERROR_CODE_KEY } from "./status.ts";

export interface ClientOptions {
  /** PEM of the CA that signed the server certificate (private CA). */
  ca?: Buffer | undefined;
  /** Client certificate and key for mTLS. */
  cert?: Buffer | undefined;
  key?: Buffer | undefined;
  token?: string | undefined;
  /** Deadline for unary and client-streaming calls (default 30 s). */
  deadlineMs?: number;
  maxReceiveMessageBytes?: number;
}

export interface CallOpts {
  signal?: AbortSignal;
  deadlineMs?: number;
  metadata?: Metadata;
}

/** A failed call: the message names the method, the status and the server's details. */
export class GrpcCallError extends Error {
  readonly code: status;
  readonly details: string;
  readonly method: string;
  /** Ferry's stable error code from the trailers, when the server set one. */
  readonly errorCode: string | undefined;
  constructor(method: string, err: ServiceError) {
    const short = method
      .split("/")
      .slice(1)
      .join("/")
      .replace(/^.*\.(\w+\/\w+)$/, "$1");
    super(`${short}: ${status[err.code] ?? err.code}: ${err.details}`);
    this.name = "GrpcCallError";
    this.code = err.code;
    this.details = err.details;
    this.method = method;
    const ec = err.metadata?.get(ERROR_CODE_KEY)[0];
    this.errorCode = typeof ec === "string" ? ec : undefined;
  }
}

type ClientMethod<M> = M extends {
  requestStream: infer RS;
  responseStream: infer SS;
  requestSerialize: (v: infer Req) => Buffer;
  responseDeserialize: (b: Buffer) => infer Res;
}
  ? RS extends true
    ? SS extends true
      ? (reqs: AsyncIterable<Req> | Iterable<Req>, opts?: CallOpts) => AsyncIterable<Res>
      : (reqs: AsyncIterable<Req> | Iterable<Req>, opts?: CallOpts) => Promise<Res>
    : SS extends true
      ? (req: Req, opts?: CallOpts) => AsyncIterable<Res>
      : (req: Req, opts?: CallOpts) => Promise<Res>
  : never;

export type TypedClient<D> = { [K in keyof D]: ClientMethod<D[K]> } & { close(): void; raw: Client };

export function channelCredentials(opts: ClientOptions): ChannelCredentials {
  if (opts.ca || opts.cert) {
    const ch = credentials.createSsl(opts.ca ?? null, opts.key ?? null, opts.cert ?? null);
    return ch;
  }
  return credentials.createInsecure();
}

export function createClient<D extends Record<string, { path: string; requestStream: boolean; responseStream: boolean }>>(
  definition: D,
  address: string,
  opts: ClientOptions = {},
): TypedClient<D> {
  const Ctor = makeGenericClientConstructor(definition as unknown as ServiceDefinition, "");
  const raw = new Ctor(address, channelCredentials(opts), {
    "grpc.max_receive_message_length": opts.maxReceiveMessageBytes ?? 16 * 1024 * 1024,
  }) as unknown as Client & Record<string, (...args: unknown[]) => unknown>;
  const out: Record<string, unknown> = { close: () => raw.close(), raw };
  const baseDeadline = opts.deadlineMs ?? 30_000;

  const prepare = (path: string, unaryLike: boolean, o: CallOpts = {}) => {
    const md = o.metadata?.clone() ?? new Metadata();
    if (opts.token) md.set("authorization", `Bearer ${opts.token}`);
    const callOpts: CallOptions = {};
    const ms = o.deadlineMs ?? (unaryLike ? baseDeadline : undefined);
    if (ms !== undefined) callOpts.deadline = new Date(Date.now() + ms);
    return { md, callOpts, path };
  };

  for (const [key, m] of Object.entries(definition)) {
    const fn = raw[key]!.bind(raw);
    if (!m.requestStream && !m.responseStream) {
      out[key] = (req: unknown, o?: CallOpts) => {
        const { md, callOpts } = prepare(m.path, true, o);
        return new Promise((resolve, reject) => {
          const call = fn(req, md, callOpts, (err: ServiceError | null, res: unknown) =>
            err ? reject(new GrpcCallError(m.path, err)) : resolve(res),
          ) as { cancel(): void };
          o?.signal?.addEventListener("abort", () => call.cancel(), { once: true });
        });
      };
    } else if (!m.requestStream && m.responseStream) {
      out[key] = (req: unknown, o?: CallOpts) => {
        const { md, callOpts } = prepare(m.path, false, o);
        const call = fn(req, md, callOpts) as ClientReadableStream<unknown>;
        o?.signal?.addEventListener("abort", () => call.cancel(), { once: true });
        return readStream(m.path, call);
      };
    } else if (m.requestStream && !m.responseStream) {
      out[key] = (reqs: AsyncIterable<unknown> | Iterable<unknown>, o?: CallOpts) => {
        const { md, callOpts } = prepare(m.path, true, o);
        return new Promise((resolve, reject) => {
          const call = fn(md, callOpts, (err: ServiceError | null, res: unknown) =>
            err ? reject(new GrpcCallError(m.path, err)) : resolve(res),
          ) as ClientWritableStream<unknown>;
          o?.signal?.addEventListener("abort", () => call.cancel(), { once: true });
          void pump(reqs, call);
        });
      };
    } else {
      out[key] = (reqs: AsyncIterable<unknown> | Iterable<unknown>, o?: CallOpts) => {
        const { md, callOpts } = prepare(m.path, false, o);
        const call = fn(md, callOpts) as ClientDuplexStream<unknown, unknown>;
        o?.signal?.addEventListener("abort", () => call.cancel(), { once: true });
        void pump(reqs, call);
        return readStream(m.path, call);
      };
    }
  }
  return out as TypedClient<D>;
}

async function pump(reqs: AsyncIterable<unknown> | Iterable<unknown>, call: ClientWritableStream<unknown>) {
  try {
    for await (const r of reqs) {
      if (!call.write(r)) await new Promise((res) => call.once("drain", res));
    }
    call.end();
  } catch (err) {
    call.cancel();
    throw err;
  }
}

async function* readStream<T>(path: string, call: ClientReadableStream<T>): AsyncIterable<T> {
  try {
    for await (const item of call) yield item as T;
  } catch (err) {
    const e = err as ServiceError;
    if (typeof e.code === "number") throw new GrpcCallError(path, e);
    throw err;
  } finally {
    call.cancel();
  }
}
