// The crash policy of every service process (installCrashPolicy, via serviceMain), in a
// real child process: a rejected promise nobody awaited is logged with its stack and the
// service goes on serving; an exception that reaches the event loop is logged as fatal
// and the process exits 1 (its supervisor restarts it from durable state).
import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { repoRoot } from "@ferry/testing";

/** Runs a service whose start() schedules `fault`, then stops itself after 300 ms. */
function runService(fault: string): { status: number | null; lines: Array<Record<string, unknown>> } {
  const script = `
    import { serviceMain } from "@ferry/runtime";
    await serviceMain("crashy", () => ({ logLevel: "info" }), () => ({
      async start() {
        ${fault}
        setTimeout(() => { console.log(JSON.stringify({ msg: "still serving" })); process.kill(process.pid, "SIGTERM"); }, 300);
      },
      async stop() {},
    }));`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { cwd: repoRoot, encoding: "utf8", timeout: 20_000 });
  const lines = r.stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { status: r.status, lines };
}

describe("crash policy", () => {
  it("an unhandled rejection is logged with its stack and counted, and the service goes on, then drains cleanly", () => {
    const { status, lines } = runService(`void Promise.reject(new Error("nobody awaited me"));`);
    const logged = lines.find((l) => String(l.msg).startsWith("unhandled promise rejection"));
    expect(logged, JSON.stringify(lines)).toBeDefined();
    expect((logged!.err as { message: string; stack: string }).message).toBe("nobody awaited me");
    expect((logged!.err as { stack: string }).stack).toMatch(/Error: nobody awaited me/);
    expect(logged!.unhandledRejections).toBe(1);
    expect(lines.some((l) => l.msg === "still serving")).toBe(true);
    expect(status).toBe(0);
  });

  it("an uncaught exception is logged as fatal and the process exits 1 at once", () => {
    const { status, lines } = runService(`setTimeout(() => { throw new Error("handler broke half-way"); }, 10);`);
    const fatal = lines.find((l) => String(l.msg).startsWith("uncaught exception"));
    expect(fatal, JSON.stringify(lines)).toBeDefined();
    expect(fatal!.level).toBe("fatal");
    expect((fatal!.err as { message: string }).message).toBe("handler broke half-way");
    expect(lines.some((l) => l.msg === "still serving")).toBe(false);
    expect(status).toBe(1);
  });
});
