// File formats the CLI reads and writes: envelopes as proto3 JSON, keys as PEM.
import { readFileSync, writeFileSync } from "node:fs";
import { events } from "@ferry/proto";
import { loadSigningKey, type SigningKey } from "@ferry/signing";

export class CliError extends Error {
  override name = "CliError";
}

export function readText(path: string, what: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new CliError(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

export function readEnvelope(path: string): events.SignedEnvelope {
  const text = readText(path, "envelope");
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new CliError(`${path} is not JSON: ${(err as Error).message}`);
  }
  const d = doc as Record<string, unknown>;
  if (typeof d !== "object" || d === null || typeof d.manifest !== "string" || !Array.isArray(d.signatures)) {
    throw new CliError(`${path} is not a signed envelope ({"manifest": base64, "signatures": [...]}); sign a manifest with \`ferry releases sign\``);
  }
  return events.SignedEnvelope.fromJSON(doc);
}

export function isEnvelopeFile(path: string): boolean {
  try {
    const d = JSON.parse(readText(path, "file")) as Record<string, unknown>;
    return typeof d.manifest === "string" && Array.isArray(d.signatures);
  } catch {
    return false;
  }
}

export function envelopeJson(env: events.SignedEnvelope): string {
  return `${JSON.stringify(events.SignedEnvelope.toJSON(env), null, 2)}\n`;
}

export function readKeys(paths: string[]): SigningKey[] {
  if (paths.length === 0) throw new CliError("no signing key given (--key <file.key>)");
  return paths.map((p) => {
    try {
      return loadSigningKey(readText(p, "key"));
    } catch (err) {
      if (err instanceof CliError) throw err;
      throw new CliError(`${p}: ${(err as Error).message}`);
    }
  });
}

export function writeOut(path: string | undefined, text: string, mode = 0o644): void {
  if (!path || path === "-") process.stdout.write(text);
  else writeFileSync(path, text, { mode });
}

export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ")).join("\n") + "\n";
}

export function humanBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${i === 0 ? x : x.toFixed(1)} ${units[i]}`;
}
