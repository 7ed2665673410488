// Runs the real `ferry` CLI (cli/src/main.ts on this Node) for end-to-end tests.
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { repoRoot } from "@ferry/testing";

const exec = promisify(execFile);

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `run` gives the exit code and output; `ok` throws unless it exits 0 and returns stdout. */
export function ferryCli(globalArgs: () => string[], cwd?: string) {
  const run = async (...args: string[]): Promise<CliResult> => {
    try {
      const r = await exec(process.execPath, [join(repoRoot, "cli/src/main.ts"), ...globalArgs(), ...args], {
        ...(cwd ? { cwd } : {}),
        env: { PATH: process.env.PATH ?? "" },
        maxBuffer: 64 << 20,
      });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as CliResult;
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };
  const ok = async (...args: string[]): Promise<string> => {
    const r = await run(...args);
    if (r.code !== 0) throw new Error(`ferry ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
  };
  return { run, ok };
}
