export { createApp, SERVICE } from "./app.ts";
export { loadConfig } from "./config.ts";
