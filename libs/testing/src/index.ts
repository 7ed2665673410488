export * from "./nats-server.ts";
export * from "./helpers.ts";
export * from "./compose.ts";
export * from "./fake-kube.ts";
export * from "./releases.ts";
