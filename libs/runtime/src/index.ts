export * from "./errors.ts";
export * from "./config.ts";
export * from "./logger.ts";
export * from "./lifecycle.ts";
export * from "./abort.ts";
export * from "./reclaim.ts";
export * from "./atomic-file.ts";
export * from "./backoff.ts";
