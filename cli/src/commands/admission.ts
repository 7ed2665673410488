// ferry nodes ls --pending / admit / revoke / enroll, and ferry site init: board admission
// against the planner, and the site's identities (NATS, the planner's assignment key).
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadSigningKey, writeKeyPair } from "@ferry/signing";
import type { Command } from "commander";
import { createUser } from "@nats-io/nkeys";
import { fmtCreds } from "@nats-io/jwt";
import { planner } from "@ferry/proto";
import { SiteAuth } from "@ferry/messaging";
import { table } from "../io.ts";
import { kubeNamespace, readSiteSecret, SITE_SECRETS, WHOLE_SITE, writeSiteSecrets } from "./site-secrets.ts";
import { using, type Ctx } from "./clients.ts";

const state = (s: planner.AdmissionState) => planner.admissionStateToJSON(s).replace("ADMISSION_STATE_", "").toLowerCase();

/** `ferry nodes ls --pending` (and --admissions): the boards that asked to join. */
export async function listAdmissions(ctx: Ctx, only: planner.AdmissionState): Promise<void> {
  const r = await using(ctx, "planner", (c) => c.listAdmissions({ state: only }));
  ctx.print(planner.ListAdmissionsResponse.toJSON(r), () =>
    table([
      ["NAME", "STATE", "KEY", "BOARD", "ROLE", "ASKED", "CHANGED", "CONFLICTS"],
      ...r.admissions.map((a) => [
        a.name,
        state(a.state),
        a.publicKey,
        a.board || "-",
        a.role.replace("ROLE_", "").toLowerCase() || "-",
        a.requestedAt?.toISOString() ?? "-",
        a.changedAt?.toISOString() ?? "-",
        String(a.conflictingRequests),
      ]),
    ]),
  );
}

export function registerAdmissionCommands(nodes: Command, program: Command, ctx: Ctx): void {
  nodes
    .command("admit")
    .argument("<name>")
    .description("admit a board that asked to join: it receives NATS credentials scoped to its name")
    .option("--key <nkey>", "the key the board logged (refused if the request came with another)", "")
    .action(async (name: string, o: { key: string }) => {
      const a = await using(ctx, "planner", (c) => c.admitNode({ name, publicKey: o.key }));
      ctx.print(planner.Admission.toJSON(a), () => `admitted ${a.name} (key ${a.publicKey})\n`);
    });
  nodes
    .command("revoke")
    .argument("<name>")
    .description("cut a board off at once: its NATS user is revoked and the server disconnects it")
    .option("--reason <text>", "why (kept in its admission record)", "")
    .action(async (name: string, o: { reason: string }) => {
      const a = await using(ctx, "planner", (c) => c.revokeNode({ name, reason: o.reason }));
      ctx.print(planner.Admission.toJSON(a), () => `revoked ${a.name} (key ${a.publicKey})\n`);
    });
  nodes
    .command("enroll")
    .argument("<name>")
    .description("pre-provision a board: write its NATS credentials (its key is made here and never leaves this machine)")
    .requiredOption("-o, --output <file>", "credentials file to write (give it to the board as FERRY_NATS_CREDS)")
    .action(async (name: string, o: { output: string }) => {
      const kp = createUser();
      const r = await using(ctx, "planner", (c) => c.enrollNode({ name, publicKey: kp.getPublicKey() }));
      writeFileSync(o.output, fmtCreds(r.jwt, kp), { mode: 0o600 });
      ctx.print({ admission: planner.Admission.toJSON(r.admission!), output: o.output }, () => `enrolled ${name}: credentials in ${o.output}\n`);
    });

  program
    .command("site")
    .description("the site's own set-up")
    .command("init")
    .description(
      "create the site's identities: NATS (operator, accounts, component credentials, nats-server include) and the planner's assignment key (planner.key, planner.pub for the boards' keyring); keeps what exists",
    )
    .requiredOption("--dir <dir>", "directory to write (keep it secret: it holds the site's seeds)")
    .option(
      "--kube-secrets [namespace]",
      `also keep them as Kubernetes Secrets, each component only its own (${Object.keys(SITE_SECRETS).join(", ")}); an existing ${WHOLE_SITE} is reused`,
    )
    .action(async (o: { dir: string; kubeSecrets?: string | true }) => {
      const namespace = o.kubeSecrets === undefined ? undefined : kubeNamespace(o.kubeSecrets === true ? undefined : o.kubeSecrets);
      const reused = namespace !== undefined && (await readSiteSecret(o.dir, namespace));
      const site = await SiteAuth.init(o.dir);
      const planner = ensurePlannerKey(o.dir);
      const secrets = namespace !== undefined ? await writeSiteSecrets(o.dir, namespace) : undefined;
      ctx.print(
        { dir: o.dir, account: site.account, plannerKeyId: planner.keyId, ...(secrets ? { namespace, reused, ...secrets } : {}) },
        () =>
          `site identities in ${o.dir} (NATS account ${site.account}, planner key ${planner.keyId})\n` +
          (secrets
            ? `Secrets in ${namespace}: ${reused ? `reused ${WHOLE_SITE}; ` : ""}created ${secrets.created.join(", ") || "none"}; kept ${secrets.kept.join(", ") || "none"}\n`
            : ""),
      );
    });
}

/** The planner's assignment key in the site directory (made once): planner.key (0600) and planner.pub. */
function ensurePlannerKey(dir: string): { keyId: string } {
  const keyFile = join(dir, "planner.key");
  if (!existsSync(keyFile)) return { keyId: writeKeyPair(dir, "planner").keyId };
  return { keyId: loadSigningKey(readFileSync(keyFile)).keyId };
}
