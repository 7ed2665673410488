export * from "./names.ts";
export * from "./connection.ts";
export * from "./channels.ts";
export * from "./auth/index.ts";
export * from "./audit.ts";
