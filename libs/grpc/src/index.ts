export * from "./server.ts";
export * from "./client.ts";
export * from "./status.ts";
export * from "./health.ts";
export { ReflectionIndex, splitDescriptorSet } from "./reflection.ts";
export * from "./config.ts";
export * from "./authz.ts";
export * from "./audit.ts";
