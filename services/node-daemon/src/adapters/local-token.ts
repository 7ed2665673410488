// The board's own NodeService credential when none is configured: a random token kept in
// <FERRY_DATA_DIR>/grpc.token (0600, made once, on the data partition so it survives slot
// switches). Install, Commit and Rollback need it (or FERRY_GRPC_TOKEN / FERRY_GRPC_ROLES):
// only root on the board, or whoever the file is given to, can drive a manual install.
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export const LOCAL_TOKEN_FILE = "grpc.token";

/** Reads the board's token, making it first if it does not exist. */
export function localToken(dataDir: string): string {
  const path = join(dataDir, LOCAL_TOKEN_FILE);
  if (!existsSync(path)) {
    mkdirSync(dataDir, { recursive: true });
    const tmp = `${path}.tmp-${process.pid}`;
    writeFileSync(tmp, `${randomBytes(32).toString("base64url")}\n`, { mode: 0o600 });
    renameSync(tmp, path);
  }
  const token = readFileSync(path, "utf8").trim();
  if (token.length < 16) throw new Error(`${path} holds no usable token (delete it to make a new one)`);
  return token;
}
