// Entry point: loadConfig → createApp → run until SIGINT/SIGTERM.
import { ConfigError, createLogger, runMain } from "@ferry/runtime";
import { createApp } from "./app.ts";
import { loadConfig } from "./config.ts";

const bootLogger = createLogger("catalog");
try {
  const config = loadConfig();
  const logger = createLogger("catalog", config.logLevel);
  await runMain(createApp(config, logger), { logger });
} catch (err) {
  if (err instanceof ConfigError) {
    bootLogger.fatal({ problems: err.problems }, err.message);
    process.exit(2);
  }
  bootLogger.fatal({ err }, "catalog failed to start");
  process.exit(1);
}
