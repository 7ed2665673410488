export { createApp } from "./app.ts";
export { loadConfig } from "./config.ts";
