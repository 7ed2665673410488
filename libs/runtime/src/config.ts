// Reading configuration from the environment: one declarative spec per service, read
// once in main, with every problem reported together and each naming its variable.
import { readFileSync } from "node:fs";
import { ConfigError } from "./errors.ts";

export type Env = Record<string, string | undefined>;

type Parser<T> = (raw: string) => T;

export interface VarSpec<T> {
  /** Environment variable name, e.g. FERRY_GRPC_ADDR. */
  name: string;
  parse: Parser<T>;
  /** Used when the variable is unset or empty. Omit to make the variable required. */
  default?: T;
  /** One line telling the operator what to set. */
  help: string;
}

export const v = {
  string: (name: string, help: string, def?: string): VarSpec<string> => ({
    name,
    help,
    parse: (s) => s,
    ...(def === undefined ? {} : { default: def }),
  }),
  optionalString: (name: string, help: string): VarSpec<string | undefined> => ({
    name,
    help,
    parse: (s) => s,
    default: undefined,
  }),
  int: (name: string, help: string, def?: number, min = 0, max = Number.MAX_SAFE_INTEGER): VarSpec<number> => ({
    name,
    help,
    parse: (s) => {
      if (!/^-?\d+$/.test(s)) throw new Error(`must be an integer, got "${s}"`);
      const n = Number(s);
      if (n < min || n > max) throw new Error(`must be between ${min} and ${max}, got ${n}`);
      return n;
    },
    ...(def === undefined ? {} : { default: def }),
  }),
  bool: (name: string, help: string, def = false): VarSpec<boolean> => ({
    name,
    help,
    default: def,
    parse: (s) => {
      if (/^(1|true|yes|on)$/i.test(s)) return true;
      if (/^(0|false|no|off)$/i.test(s)) return false;
      throw new Error(`must be true or false, got "${s}"`);
    },
  }),
  /** host:port; the port may be 0 (pick a free one). */
  addr: (name: string, help: string, def?: string): VarSpec<string> => ({
    name,
    help,
    parse: (s) => parseAddr(s),
    ...(def === undefined ? {} : { default: def }),
  }),
  /** host:port, or unset/empty for "none". */
  optionalAddr: (name: string, help: string): VarSpec<string | undefined> => ({
    name,
    help,
    parse: (s) => (s.trim() === "" ? undefined : parseAddr(s)),
    default: undefined,
  }),
  url: (name: string, help: string, protocols: string[], def?: string): VarSpec<string> => ({
    name,
    help,
    parse: (s) => {
      for (const part of s.split(",")) {
        let u: URL;
        try {
          u = new URL(part.trim());
        } catch {
          throw new Error(`must be a URL (${protocols.join(", ")}), got "${part}"`);
        }
        if (!protocols.includes(u.protocol.replace(/:$/, ""))) {
          throw new Error(`must use ${protocols.join(" or ")}, got "${u.protocol}"`);
        }
      }
      return s;
    },
    ...(def === undefined ? {} : { default: def }),
  }),
  /** A path to a readable file; the value is the path (read it where it is used). */
  file: (name: string, help: string, optional = true): VarSpec<string | undefined> => ({
    name,
    help,
    parse: (s) => {
      try {
        readFileSync(s);
      } catch (err) {
        throw new Error(`cannot read file "${s}": ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
      }
      return s;
    },
    ...(optional ? { default: undefined } : {}),
  }),
  enumOf: <T extends string>(name: string, help: string, values: readonly T[], def: T): VarSpec<T> => ({
    name,
    help,
    default: def,
    parse: (s) => {
      if (!(values as readonly string[]).includes(s)) throw new Error(`must be one of ${values.join(", ")}, got "${s}"`);
      return s as T;
    },
  }),
};

export function parseAddr(s: string): string {
  const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]*):(\d{1,5})$/.exec(s);
  if (!m || Number(m[2]) > 65535) throw new Error(`must be host:port, got "${s}"`);
  return s;
}

type Specs = Record<string, VarSpec<unknown>>;
export type ConfigOf<S extends Specs> = { [K in keyof S]: S[K] extends VarSpec<infer T> ? T : never };

/**
 * Reads every variable of `specs` from `env`; throws one ConfigError listing all problems.
 */
export function readConfig<S extends Specs>(specs: S, env: Env = process.env): ConfigOf<S> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [key, spec] of Object.entries(specs)) {
    const raw = env[spec.name];
    if (raw === undefined || raw === "") {
      if ("default" in spec) out[key] = spec.default;
      else problems.push(`${spec.name} is required: ${spec.help}`);
      continue;
    }
    try {
      out[key] = spec.parse(raw);
    } catch (err) {
      problems.push(`${spec.name} ${(err as Error).message} (${spec.help})`);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return out as ConfigOf<S>;
}

/** Adds a problem-checking step after readConfig (cross-variable rules). */
export function check(problems: Array<string | false | undefined>): void {
  const real = problems.filter((p): p is string => typeof p === "string");
  if (real.length > 0) throw new ConfigError(real);
}
