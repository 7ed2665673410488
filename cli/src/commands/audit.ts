// ferry audit ls: who changed what, when, on the planner, the catalog and the distributor
// (the FERRY_AUDIT stream, read through the planner).
import type { Command } from "commander";
import { events } from "@ferry/proto";
import { CliError, table } from "../io.ts";
import { using, type Ctx } from "./clients.ts";

const SERVICES = ["planner", "catalog", "distributor"];

function parseSince(v: string): Date {
  const rel = /^(\d+)([smhd])$/.exec(v);
  if (rel) return new Date(Date.now() - Number(rel[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[rel[2] as "s" | "m" | "h" | "d"]);
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new CliError(`--since ${v}: give a duration (30m, 12h, 7d) or an RFC 3339 time`);
  return new Date(t);
}

export function registerAuditCommands(program: Command, ctx: Ctx): void {
  program
    .command("audit")
    .description("the audit trail: every call that changed something, or was refused")
    .command("ls")
    .description("list audit records, oldest first (the newest --limit of those that match)")
    .option("--since <when>", "only after this: a duration (30m, 12h, 7d) or an RFC 3339 time")
    .option("--limit <n>", "at most this many (≤ 10000)", "100")
    .option("--service <name>", `only this service (${SERVICES.join(", ")})`, "")
    .option("--principal <name>", "only this caller", "")
    .action(async (o: { since?: string; limit: string; service: string; principal: string }) => {
      const limit = Number(o.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new CliError(`--limit ${o.limit}: give a whole number from 1 to 10000`);
      if (o.service && !SERVICES.includes(o.service)) throw new CliError(`--service ${o.service}: one of ${SERVICES.join(", ")}`);
      const since = o.since ? parseSince(o.since) : undefined;
      const r = await using(ctx, "planner", (c) => c.listAuditRecords({ since, limit, service: o.service, principal: o.principal }));
      ctx.print({ records: r.records.map((x) => events.AuditRecord.toJSON(x)) }, () =>
        table([
          ["TIME", "SERVICE", "PRINCIPAL", "CALL", "CODE", "MS", "REQUEST"],
          ...r.records.map((x) => [
            x.time?.toISOString() ?? "",
            x.service,
            x.principal,
            x.method.split("/")[2] ?? x.method,
            x.code,
            String(x.ms),
            x.request.length > 80 ? `${x.request.slice(0, 79)}…` : x.request,
          ]),
        ]),
      );
    });
}
