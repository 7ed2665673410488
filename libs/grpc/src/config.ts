// The gRPC variables every service reads: TLS/mTLS files and the bearer token.
import { readFileSync } from "node:fs";
import { check, readConfig, v, type Env } from "@ferry/runtime";
import type { TlsOptions } from "./server.ts";
import { parseRoles, type PrincipalSpec } from "./authz.ts";
import type { ClientOptions } from "./client.ts";

export const grpcServerVars = {
  tlsCert: v.file("FERRY_GRPC_TLS_CERT", "PEM certificate chain for this gRPC server (enables TLS)"),
  tlsKey: v.file("FERRY_GRPC_TLS_KEY", "PEM private key for FERRY_GRPC_TLS_CERT"),
  tlsClientCa: v.file("FERRY_GRPC_TLS_CLIENT_CA", "PEM of the private CA for client certificates (enables mTLS)"),
  token: v.optionalString("FERRY_GRPC_TOKEN", "a bearer token with every right (admin); FERRY_GRPC_ROLES gives callers their own"),
  roles: v.optionalString(
    "FERRY_GRPC_ROLES",
    'callers and their roles (viewer, operator, release, admin): JSON {"principals": [{"name", "roles", "tokenSha256" | "certCn"}]}, or a file holding it',
  ),
  insecureToken: v.bool("FERRY_GRPC_ALLOW_TOKEN_WITHOUT_TLS", "allow FERRY_GRPC_TOKEN without TLS (loopback only)"),
};

export interface GrpcSecurity {
  tls: TlsOptions | undefined;
  token: string | undefined;
  principals: PrincipalSpec[];
}

/** Reads and cross-checks the gRPC security variables. */
export function loadGrpcSecurity(env: Env = process.env): GrpcSecurity {
  const c = readConfig(grpcServerVars, env);
  let principals: PrincipalSpec[] = [];
  try {
    principals = c.roles ? parseRoles(c.roles) : [];
  } catch (err) {
    check([(err as Error).message]);
  }
  const tokens = c.token !== undefined || principals.some((p) => p.tokenSha256);
  check([
    (c.tlsCert === undefined) !== (c.tlsKey === undefined) && "FERRY_GRPC_TLS_CERT and FERRY_GRPC_TLS_KEY must be set together",
    c.tlsClientCa !== undefined && c.tlsCert === undefined && "FERRY_GRPC_TLS_CLIENT_CA needs FERRY_GRPC_TLS_CERT and FERRY_GRPC_TLS_KEY",
    tokens &&
      c.tlsCert === undefined &&
      !c.insecureToken &&
      "bearer tokens (FERRY_GRPC_TOKEN, FERRY_GRPC_ROLES) over plaintext would leak: set FERRY_GRPC_TLS_CERT/KEY, or FERRY_GRPC_ALLOW_TOKEN_WITHOUT_TLS=true on loopback",
    principals.some((p) => p.certCn) &&
      c.tlsClientCa === undefined &&
      "FERRY_GRPC_ROLES names client certificates (certCn): set FERRY_GRPC_TLS_CLIENT_CA (mTLS)",
  ]);
  const tls =
    c.tlsCert && c.tlsKey
      ? { cert: readFileSync(c.tlsCert), key: readFileSync(c.tlsKey), clientCa: c.tlsClientCa ? readFileSync(c.tlsClientCa) : undefined }
      : undefined;
  return { tls, token: c.token, principals };
}

export const grpcClientVars = {
  ca: v.file("FERRY_GRPC_CA", "PEM of the private CA that signed the servers' certificates (enables TLS)"),
  cert: v.file("FERRY_GRPC_CLIENT_CERT", "PEM client certificate for mTLS"),
  key: v.file("FERRY_GRPC_CLIENT_KEY", "PEM key for FERRY_GRPC_CLIENT_CERT"),
  token: v.optionalString("FERRY_GRPC_TOKEN", "bearer token sent with every call"),
};

export function loadClientOptions(env: Env = process.env): ClientOptions {
  const c = readConfig(grpcClientVars, env);
  return {
    ca: c.ca ? readFileSync(c.ca) : undefined,
    cert: c.cert ? readFileSync(c.cert) : undefined,
    key: c.key ? readFileSync(c.key) : undefined,
    token: c.token,
  };
}
