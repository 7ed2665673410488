// A client that knows nothing of Ferry's protos: like grpcurl, it asks the server's
// reflection service for descriptors, builds a registry from them and calls methods
// with JSON. Used by tests (the grpcurl path) and available to tools.
import { createFileRegistry, fromBinary, fromJson, toBinary, toJson, type JsonValue } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { create } from "@bufbuild/protobuf";
import { Client, Metadata, type ServiceError } from "@grpc/grpc-js";
import { reflectionV1 } from "@ferry/proto";
import { channelCredentials, GrpcCallError, type ClientOptions } from "./client.ts";

export class ReflectionClient {
  readonly #client: Client;
  readonly #opts: ClientOptions;
  readonly #files = new Map<string, FileDescriptorProto>();

  constructor(address: string, opts: ClientOptions = {}) {
    this.#client = new Client(address, channelCredentials(opts));
    this.#opts = opts;
  }

  close(): void {
    this.#client.close();
  }

  #metadata(): Metadata {
    const md = new Metadata();
    if (this.#opts.token) md.set("authorization", `Bearer ${this.#opts.token}`);
    return md;
  }

  /** One reflection request/response over a fresh stream, as grpcurl does per lookup. */
  async #ask(req: Partial<reflectionV1.ServerReflectionRequest>): Promise<reflectionV1.ServerReflectionResponse> {
    const path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    const call = this.#client.makeBidiStreamRequest(
      path,
      (v: reflectionV1.ServerReflectionRequest) => Buffer.from(reflectionV1.ServerReflectionRequest.encode(v).finish()),
      (b: Buffer) => reflectionV1.ServerReflectionResponse.decode(b),
      this.#metadata(),
      { deadline: new Date(Date.now() + 10_000) },
    );
    const res = new Promise<reflectionV1.ServerReflectionResponse>((resolve, reject) => {
      call.once("data", (d: reflectionV1.ServerReflectionResponse) => resolve(d));
      call.once("error", (e: ServiceError) => reject(new GrpcCallError(path, e)));
    });
    call.write(reflectionV1.ServerReflectionRequest.fromPartial(req));
    call.end();
    const out = await res;
    call.on("error", () => {}); // the CANCELLED our own cancel() causes
    call.cancel();
    if (out.errorResponse) throw new Error(`reflection: ${out.errorResponse.errorMessage}`);
    return out;
  }

  async listServices(): Promise<string[]> {
    const res = await this.#ask({ listServices: "*" });
    return (res.listServicesResponse?.service ?? []).map((s) => s.name);
  }

  async #load(req: Partial<reflectionV1.ServerReflectionRequest>): Promise<void> {
    const res = await this.#ask(req);
    for (const raw of res.fileDescriptorResponse?.fileDescriptorProto ?? []) {
      const fd = fromBinary(FileDescriptorProtoSchema, raw);
      this.#files.set(fd.name, fd);
    }
    // Fetch any dependency the server did not send along.
    for (const fd of [...this.#files.values()]) {
      for (const dep of fd.dependency) if (!this.#files.has(dep)) await this.#load({ fileByFilename: dep });
    }
  }

  /** Describes a service the way `grpcurl describe` does: its methods with their types. */
  async describe(
    service: string,
  ): Promise<Array<{ name: string; input: string; output: string; serverStreaming: boolean; clientStreaming: boolean }>> {
    await this.#load({ fileContainingSymbol: service });
    const svc = this.#registry().getService(service);
    if (!svc) throw new Error(`service ${service} not found`);
    return svc.methods.map((m) => ({
      name: m.name,
      input: m.input.typeName,
      output: m.output.typeName,
      serverStreaming: m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming",
      clientStreaming: m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming",
    }));
  }

  /** A registry of every file loaded so far; files are added dependencies first. */
  #registry() {
    const ordered: FileDescriptorProto[] = [];
    const seen = new Set<string>();
    const visit = (name: string) => {
      const fd = this.#files.get(name);
      if (!fd || seen.has(name)) return;
      seen.add(name);
      fd.dependency.forEach(visit);
      ordered.push(fd);
    };
    [...this.#files.keys()].forEach(visit);
    return createFileRegistry(create(FileDescriptorSetSchema, { file: ordered }));
  }

  /** Calls a unary method with a JSON request and returns the JSON response. */
  async invoke(service: string, method: string, request: JsonValue): Promise<JsonValue> {
    await this.#load({ fileContainingSymbol: service });
    const registry = this.#registry();
    const m = registry.getService(service)?.methods.find((x) => x.name === method);
    if (!m) throw new Error(`method ${service}/${method} not found`);
    const path = `/${service}/${method}`;
    const msg = fromJson(m.input, request, { registry });
    return new Promise((resolve, reject) => {
      this.#client.makeUnaryRequest(
        path,
        (v: Uint8Array) => Buffer.from(v),
        (b: Buffer) => b,
        toBinary(m.input, msg),
        this.#metadata(),
        { deadline: new Date(Date.now() + 10_000) },
        (err, res) => {
          if (err) return reject(new GrpcCallError(path, err));
          resolve(toJson(m.output, fromBinary(m.output, res!), { registry }));
        },
      );
    });
  }
}
