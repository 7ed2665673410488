// Server reflection (grpc.reflection.v1 and v1alpha) answered from the raw
// FileDescriptorSet that buf builds: each file is served as the exact bytes buf wrote,
// so grpcurl sees the same descriptors (comments included) as protoc would give it.
// The index is built on the first reflection request: decoding descriptors takes the
// whole of @bufbuild/protobuf (several MB of RSS), which a board's daemon should not
// carry for a request that usually never comes.
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import type { DescriptorProto, FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { status } from "@grpc/grpc-js";
import type { reflectionV1 } from "@ferry/proto";
import type { Implementation } from "./server.ts";

interface FileEntry {
  name: string;
  raw: Uint8Array;
  deps: string[];
}

/** Splits a FileDescriptorSet into its files' raw bytes without re-encoding them. */
export function splitDescriptorSet(set: Uint8Array): Uint8Array[] {
  const reader = new BinaryReader(set);
  const files: Uint8Array[] = [];
  while (reader.pos < reader.len) {
    const [field, wire] = reader.tag();
    if (field === 1 && wire === WireType.LengthDelimited) files.push(reader.bytes());
    else reader.skip(wire);
  }
  return files;
}

export class ReflectionIndex {
  readonly #files = new Map<string, FileEntry>();
  /** Fully qualified symbol (message, enum, service, method, field) → file name. */
  readonly #symbols = new Map<string, string>();
  readonly #extensions = new Map<string, Map<number, string>>();
  readonly #services: () => string[];

  /** Decodes the descriptor set (loading @bufbuild/protobuf) and indexes its symbols. */
  static async load(descriptorSet: Uint8Array, services: () => string[]): Promise<ReflectionIndex> {
    const [{ fromBinary }, { FileDescriptorProtoSchema }] = await Promise.all([import("@bufbuild/protobuf"), import("@bufbuild/protobuf/wkt")]);
    return new ReflectionIndex(descriptorSet, services, (raw) => fromBinary(FileDescriptorProtoSchema, raw));
  }

  /** Reflection served from an index built on the first request. */
  static lazy(descriptorSet: () => Uint8Array, services: () => string[]): Implementation<typeof reflectionV1.ServerReflectionService> {
    let index: Promise<ReflectionIndex> | undefined;
    return {
      serverReflectionInfo: async function* (reqs) {
        const i = await (index ??= ReflectionIndex.load(descriptorSet(), services));
        for await (const req of reqs) yield i.answer(req);
      },
    };
  }

  constructor(descriptorSet: Uint8Array, services: () => string[], decode: (raw: Uint8Array) => FileDescriptorProto) {
    this.#services = services;
    for (const raw of splitDescriptorSet(descriptorSet)) {
      const fd = decode(raw);
      const entry: FileEntry = { name: fd.name, raw, deps: fd.dependency };
      this.#files.set(fd.name, entry);
      const pkg = fd.package ? `${fd.package}.` : "";
      const addMessage = (m: DescriptorProto, prefix: string) => {
        const full = `${prefix}${m.name}`;
        this.#symbols.set(full, fd.name);
        for (const f of m.field) this.#symbols.set(`${full}.${f.name}`, fd.name);
        for (const e of m.enumType) this.#symbols.set(`${full}.${e.name}`, fd.name);
        for (const n of m.nestedType) addMessage(n, `${full}.`);
        for (const x of m.extension) this.#addExtension(x.extendee, x.number, fd.name);
      };
      for (const m of fd.messageType) addMessage(m, pkg);
      for (const e of fd.enumType) this.#symbols.set(`${pkg}${e.name}`, fd.name);
      for (const s of fd.service) {
        this.#symbols.set(`${pkg}${s.name}`, fd.name);
        for (const m of s.method) this.#symbols.set(`${pkg}${s.name}.${m.name}`, fd.name);
      }
      for (const x of fd.extension) this.#addExtension(x.extendee, x.number, fd.name);
    }
  }

  #addExtension(extendee: string, num: number, file: string) {
    const type = extendee.replace(/^\./, "");
    let m = this.#extensions.get(type);
    if (!m) this.#extensions.set(type, (m = new Map()));
    m.set(num, file);
  }

  /** The file and every file it depends on, transitively, dependencies first. */
  fileWithDeps(name: string): Uint8Array[] | undefined {
    if (!this.#files.has(name)) return undefined;
    const out: Uint8Array[] = [];
    const seen = new Set<string>();
    const visit = (n: string) => {
      if (seen.has(n)) return;
      seen.add(n);
      const f = this.#files.get(n);
      if (!f) return;
      for (const d of f.deps) visit(d);
      out.push(f.raw);
    };
    visit(name);
    // The requested file first, as grpc-go does; grpcurl accepts any order.
    return [out[out.length - 1]!, ...out.slice(0, -1)];
  }

  answer(req: reflectionV1.ServerReflectionRequest): reflectionV1.ServerReflectionResponse {
    const base = { validHost: req.host, originalRequest: req };
    const notFound = (what: string) => ({
      ...base,
      errorResponse: { errorCode: status.NOT_FOUND, errorMessage: `${what} not found` },
    });
    const files = (list: Uint8Array[] | undefined, what: string) =>
      list ? { ...base, fileDescriptorResponse: { fileDescriptorProto: list.map((b) => Buffer.from(b)) } } : notFound(what);

    if (req.listServices !== undefined) {
      const names = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", ...this.#services()];
      return { ...base, listServicesResponse: { service: names.map((name) => ({ name })) } };
    }
    if (req.fileByFilename !== undefined) return files(this.fileWithDeps(req.fileByFilename), `file "${req.fileByFilename}"`);
    if (req.fileContainingSymbol !== undefined) {
      const file = this.#symbols.get(req.fileContainingSymbol.replace(/^\./, ""));
      return files(file ? this.fileWithDeps(file) : undefined, `symbol "${req.fileContainingSymbol}"`);
    }
    if (req.fileContainingExtension !== undefined) {
      const { containingType, extensionNumber } = req.fileContainingExtension;
      const file = this.#extensions.get(containingType)?.get(extensionNumber);
      return files(file ? this.fileWithDeps(file) : undefined, `extension ${containingType}(${extensionNumber})`);
    }
    if (req.allExtensionNumbersOfType !== undefined) {
      const type = req.allExtensionNumbersOfType;
      if (!this.#symbols.has(type)) return notFound(`type "${type}"`);
      return { ...base, allExtensionNumbersResponse: { baseTypeName: type, extensionNumber: [...(this.#extensions.get(type)?.keys() ?? [])] } };
    }
    return { ...base, errorResponse: { errorCode: status.INVALID_ARGUMENT, errorMessage: "empty reflection request" } };
  }
}
