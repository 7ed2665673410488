export * from "./nats-server.ts";
export * from "./helpers.ts";
