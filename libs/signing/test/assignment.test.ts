// Signed assignments: what a board accepts and why it refuses the rest; a generated
// history of writes (re-signs, replays, older terms, another node's, tampered bytes) is
// accepted exactly when it is genuine and not older than what was accepted before.
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { events } from "@ferry/proto";
import {
  acceptAssignment,
  AssignmentRefused,
  createKeyring,
  generateKeyPair,
  loadSigningKey,
  markAfter,
  markOf,
  signAssignment,
  withPlannerKeys,
  type AssignmentMark,
} from "../src/index.ts";

const release = generateKeyPair();
const plannerPair = generateKeyPair();
const rotated = generateKeyPair();
const planner = loadSigningKey(plannerPair.privatePem);
const ring = createKeyring([release.publicPem], 1, [plannerPair.publicPem, rotated.publicPem]);
const now = new Date("2026-12-03T12:00:00Z");
const runs = Number(process.env.FERRY_PROPERTY_RUNS ?? 200);

const base = (over: Partial<events.Assignment> = {}) =>
  events.Assignment.fromPartial({
    upgradeId: "u1",
    node: "worker-1",
    targetVersion: "v1.34.2",
    rebootAllowed: true,
    term: 3,
    updatedAt: new Date(now.getTime() - 1000),
    expiresAt: new Date(now.getTime() + 3600_000),
    ...over,
  });

const refusal = (f: () => unknown): string => {
  try {
    f();
    return "accepted";
  } catch (err) {
    if (err instanceof AssignmentRefused) return err.reason;
    throw err;
  }
};
const facts = (seen?: AssignmentMark) => ({ node: "worker-1", now, ...(seen ? { seen } : {}) });

describe("signed assignments", () => {
  it("accepts the planner's signature (either key of a rotation) and refuses everything else by name", () => {
    expect(acceptAssignment(signAssignment(base(), planner), ring, facts()).upgradeId).toBe("u1");
    expect(acceptAssignment(signAssignment(base(), loadSigningKey(rotated.privatePem)), ring, facts()).upgradeId).toBe("u1");
    const signed = signAssignment(base(), planner);
    const cases: Array<[string, () => unknown]> = [
      ["no-planner-keys", () => acceptAssignment(signed, createKeyring([release.publicPem], 1), facts())],
      ["unsigned", () => acceptAssignment({ assignment: signed.assignment, signature: undefined }, ring, facts())],
      ["unsigned", () => acceptAssignment({ assignment: Buffer.alloc(0), signature: signed.signature }, ring, facts())],
      // A release key is not a planner key, even in the same keyring.
      ["unknown-key", () => acceptAssignment(signAssignment(base(), loadSigningKey(release.privatePem)), ring, facts())],
      ["unknown-key", () => acceptAssignment(signAssignment(base(), loadSigningKey(generateKeyPair().privatePem)), ring, facts())],
      [
        "bad-signature",
        () => acceptAssignment({ ...signed, signature: { ...signed.signature!, sig: signed.signature!.sig.subarray(0, 63) } }, ring, facts()),
      ],
      ["other-node", () => acceptAssignment(signAssignment(base({ node: "worker-2" }), planner), ring, facts())],
      ["malformed", () => acceptAssignment(signAssignment(base({ expiresAt: undefined }), planner), ring, facts())],
      ["expired", () => acceptAssignment(signAssignment(base({ expiresAt: now }), planner), ring, facts())],
      ["older-term", () => acceptAssignment(signed, ring, facts({ term: 4, updatedAtMs: 0 }))],
      ["replayed", () => acceptAssignment(signed, ring, facts({ term: 3, updatedAtMs: now.getTime() }))],
    ];
    for (const [want, f] of cases) expect(refusal(f), want).toBe(want);
    // The same assignment again (a restart re-reads it) is accepted.
    expect(refusal(() => acceptAssignment(signed, ring, facts(markOf(base()))))).toBe("accepted");
  });

  it("refuses an assignment whose signed bytes were changed anywhere", () => {
    const signed = signAssignment(base({ rebootAllowed: false }), planner);
    fc.assert(
      fc.property(fc.nat(signed.assignment.length - 1), fc.integer({ min: 1, max: 255 }), (at, x) => {
        const bytes = Buffer.from(signed.assignment);
        bytes[at]! ^= x;
        expect(refusal(() => acceptAssignment({ assignment: bytes, signature: signed.signature }, ring, facts()))).toBe("bad-signature");
      }),
      { numRuns: runs },
    );
  });

  it("over a generated history of writes, accepts exactly the genuine ones not older than the newest accepted", () => {
    const write = fc.record({
      term: fc.integer({ min: 1, max: 4 }),
      at: fc.integer({ min: 0, max: 20 }),
      forge: fc.constantFrom("none", "none", "none", "other-node", "foreign-key", "expired"),
    });
    fc.assert(
      fc.property(fc.array(write, { maxLength: 30 }), (writes) => {
        let seen: AssignmentMark | undefined;
        const accepted: AssignmentMark[] = [];
        for (const w of writes) {
          const a = base({
            term: w.term,
            updatedAt: new Date(now.getTime() - 60_000 + w.at * 1000),
            ...(w.forge === "other-node" ? { node: "worker-9" } : {}),
            ...(w.forge === "expired" ? { expiresAt: new Date(now.getTime() - 1) } : {}),
          });
          const key = w.forge === "foreign-key" ? loadSigningKey(release.privatePem) : planner;
          const got = refusal(() => acceptAssignment(signAssignment(a, key), ring, facts(seen)));
          const mark = markOf(a);
          const fresh = !seen || mark.term > seen.term || (mark.term === seen.term && mark.updatedAtMs >= seen.updatedAtMs);
          expect(got === "accepted", JSON.stringify({ w, seen, got })).toBe(w.forge === "none" && fresh);
          if (got === "accepted") {
            if (markAfter(mark, seen)) seen = mark;
            accepted.push(mark);
          }
        }
        // What was accepted never goes back in (term, issue time).
        for (let i = 1; i < accepted.length; i++) expect(markAfter(accepted[i - 1]!, accepted[i])).toBe(false);
      }),
      { numRuns: runs },
    );
  });

  it("keeps the roles of a keyring apart, and takes planner keys from a separate PEM file", () => {
    expect(() => createKeyring([release.publicPem], 1, [release.publicPem])).toThrow(/both a release key and a planner key/);
    const releaseOnly = createKeyring([release.publicPem], 1);
    const both = withPlannerKeys(releaseOnly, `${plannerPair.publicPem}\n${rotated.publicPem}`);
    expect(both.planner.size).toBe(2);
    expect(acceptAssignment(signAssignment(base(), planner), both, facts()).upgradeId).toBe("u1");
    expect(() => withPlannerKeys(releaseOnly, release.publicPem)).toThrow(/both a release key and a planner key/);
    expect(() => withPlannerKeys(releaseOnly, "not a key")).toThrow(/no PEM public key/);
  });
});
