// Entry point: loadConfig → createApp → run until SIGINT/SIGTERM.
import { serviceMain } from "@ferry/runtime";
import { createApp } from "./app.ts";
import { loadConfig } from "./config.ts";

await serviceMain("planner", () => loadConfig(), createApp);
