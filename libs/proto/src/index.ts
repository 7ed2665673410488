// Generated contracts (ts-proto, see proto/; compiled to JS + .d.ts by scripts/gen.ts) and the raw FileDescriptorSet buf builds,
// which servers use for reflection. Generated code lives only in ../gen.
import { readFileSync } from "node:fs";

export * as events from "../gen/ferry/events/v1/events.js";
export * as catalog from "../gen/ferry/catalog/v1/catalog.js";
export * as planner from "../gen/ferry/planner/v1/planner.js";
export * as distributor from "../gen/ferry/distributor/v1/distributor.js";
export * as node from "../gen/ferry/node/v1/node.js";
export * as health from "../gen/grpc/health/v1/health.js";
export * as reflectionV1 from "../gen/grpc/reflection/v1/reflection.js";
export * as reflectionV1alpha from "../gen/grpc/reflection/v1alpha/reflection.js";

let descriptorSet: Uint8Array | undefined;

/** The exact FileDescriptorSet bytes `buf build` wrote for every proto in proto/. */
export function descriptorSetBytes(): Uint8Array {
  descriptorSet ??= readFileSync(new URL("../gen/descriptors.binpb", import.meta.url));
  return descriptorSet;
}
