// The OSUpgrade CRD as the API server would apply it: examples are checked against its
// OpenAPI schema (the subset it uses: types, required, bounds, lengths, patterns, and
// unknown fields refused as with fieldValidation=Strict), and its CEL rules are evaluated
// with @bufbuild/cel on old/new pairs, as transition rules are.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { run, type CelInput } from "@bufbuild/cel";
import { repoRoot } from "@ferry/testing";

interface Schema {
  type?: string;
  required?: string[];
  properties?: Record<string, Schema>;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  pattern?: string;
  "x-kubernetes-preserve-unknown-fields"?: boolean;
  "x-kubernetes-validations"?: Array<{ rule: string; message: string }>;
}

const crd = parse(readFileSync(join(repoRoot, "deploy/k8s/base/crd-osupgrade.yaml"), "utf8")) as {
  spec: {
    scope: string;
    versions: Array<{ name: string; schema: { openAPIV3Schema: Schema }; additionalPrinterColumns: Array<{ name: string; jsonPath: string }> }>;
  };
};
const version = crd.spec.versions[0]!;
const root = version.schema.openAPIV3Schema;

/** Errors of `v` against `s`, with JSON paths. */
function validate(s: Schema, v: unknown, path = ""): string[] {
  const at = path || "<root>";
  const kind = Array.isArray(v) ? "array" : v === null ? "null" : typeof v === "number" ? (Number.isInteger(v) ? "integer" : "number") : typeof v;
  if (s.type && !(s.type === kind || (s.type === "number" && kind === "integer"))) return [`${at}: expected ${s.type}, got ${kind}`];
  const errs: string[] = [];
  if (typeof v === "string") {
    if (s.minLength !== undefined && v.length < s.minLength) errs.push(`${at}: shorter than ${s.minLength}`);
    if (s.maxLength !== undefined && v.length > s.maxLength) errs.push(`${at}: longer than ${s.maxLength}`);
    if (s.pattern && !new RegExp(s.pattern).test(v)) errs.push(`${at}: does not match ${s.pattern}`);
  }
  if (typeof v === "number") {
    if (s.minimum !== undefined && v < s.minimum) errs.push(`${at}: below ${s.minimum}`);
    if (s.maximum !== undefined && v > s.maximum) errs.push(`${at}: above ${s.maximum}`);
  }
  if (kind === "object" && !s["x-kubernetes-preserve-unknown-fields"]) {
    const o = v as Record<string, unknown>;
    for (const r of s.required ?? []) if (!(r in o)) errs.push(`${path}.${r}: required`);
    for (const [k, x] of Object.entries(o)) {
      const sub = s.properties?.[k];
      if (!sub) errs.push(`${path}.${k}: unknown field`);
      else errs.push(...validate(sub, x, `${path}.${k}`));
    }
  }
  return errs;
}

const toCel = (v: unknown): CelInput =>
  Array.isArray(v)
    ? v.map(toCel)
    : v && typeof v === "object"
      ? new Map(Object.entries(v).map(([k, x]) => [k, toCel(x)]))
      : typeof v === "number" && Number.isInteger(v)
        ? BigInt(v)
        : (v as CelInput);

/** The CEL rules of the schema node at spec (transition rules get oldSelf). */
function specRules(newSpec: unknown, oldSpec?: unknown): string[] {
  return (root.properties!.spec!["x-kubernetes-validations"] ?? [])
    .filter((r) => oldSpec !== undefined || !r.rule.includes("oldSelf"))
    .filter((r) => run(r.rule, { self: toCel(newSpec), ...(oldSpec !== undefined ? { oldSelf: toCel(oldSpec) } : {}) }) !== true)
    .map((r) => r.message);
}

const obj = (spec: unknown) => ({ spec });

describe("OSUpgrade CRD", () => {
  it("is cluster-scoped with a status subresource and the printer columns kubectl shows", () => {
    expect(crd.spec.scope).toBe("Cluster");
    expect(version.additionalPrinterColumns.map((c) => c.name)).toEqual(["Target", "Phase", "Progress", "Nodes", "Age"]);
  });

  it.each([
    ["a minor", { target: "v1.35" }],
    [
      "everything",
      {
        target: "stable",
        nodeSelector: "site=berlin",
        paused: false,
        strategy: { maxUnavailable: 2, canary: 1, failureBudget: 0, healthTimeoutSeconds: 600, maintenanceWindow: "22:00-04:00" },
      },
    ],
  ])("accepts %s", (_, spec) => {
    expect(validate(root, obj(spec))).toEqual([]);
  });

  it.each([
    ["no target", {}, ".spec.target: required"],
    ["an empty target", { target: "" }, ".spec.target: shorter than 1"],
    ["a long target", { target: "v".repeat(65) }, ".spec.target: longer than 64"],
    ["maxUnavailable 0", { target: "v1.35", strategy: { maxUnavailable: 0 } }, ".spec.strategy.maxUnavailable: below 1"],
    ["a negative canary", { target: "v1.35", strategy: { canary: -1 } }, ".spec.strategy.canary: below 0"],
    [
      "a day-long health timeout plus one",
      { target: "v1.35", strategy: { healthTimeoutSeconds: 86401 } },
      ".spec.strategy.healthTimeoutSeconds: above 86400",
    ],
    ["a bad window", { target: "v1.35", strategy: { maintenanceWindow: "25:00-26:00" } }, ".spec.strategy.maintenanceWindow: does not match"],
    ["a typo", { target: "v1.35", maxUnavailabel: 2 }, ".spec.maxUnavailabel: unknown field"],
    ["a fraction", { target: "v1.35", strategy: { maxUnavailable: 1.5 } }, ".spec.strategy.maxUnavailable: expected integer"],
  ])("refuses %s", (_, spec, why) => {
    expect(validate(root, obj(spec)).join("; ")).toContain(why);
  });

  it("keeps the target immutable (a CEL transition rule), everything else may change", () => {
    expect(specRules({ target: "v1.35" })).toEqual([]);
    expect(specRules({ target: "v1.35", paused: true }, { target: "v1.35" })).toEqual([]);
    expect(specRules({ target: "v1.36" }, { target: "v1.35" })).toEqual(["spec.target is immutable: create another OSUpgrade"]);
  });
});
