import { describe, expect, it } from "vitest";
import { findPath, graphEdges, resolveTarget, type CatalogView, type GraphRelease } from "../src/domain/graph.ts";

const B = "ls1046a";
const rel = (version: string, extra: Partial<GraphRelease> = {}): GraphRelease => ({
  version,
  blocked: false,
  blockReason: "",
  allowedFrom: [],
  boards: [B, "rpi4"],
  ...extra,
});

function view(releases: GraphRelease[], opts: { aliases?: Record<string, string>; blockedEdges?: Array<[string, string]> } = {}): CatalogView {
  return {
    releases,
    aliases: new Map(Object.entries(opts.aliases ?? {})),
    blockedEdges: new Map((opts.blockedEdges ?? []).map(([a, b]) => [`${a}=${b}`, "bad combo"])),
  };
}

const base = [
  rel("v1.32.9"),
  rel("v1.33.1"),
  rel("v1.33.5"),
  rel("v1.34.1"),
  rel("v1.34.2"),
  rel("v1.34.6"),
  rel("v1.35.0"),
  rel("v1.35.2"),
  rel("v1.36.0-rc.1"),
];

describe("findPath", () => {
  const cases: Array<{ name: string; v: CatalogView; from: string; to: string; board?: string; want?: string[]; err?: RegExp }> = [
    {
      name: "multi-hop takes the newest patch of each minor",
      v: view(base),
      from: "v1.32.9",
      to: "v1.35.2",
      want: ["v1.33.5", "v1.34.6", "v1.35.2"],
    },
    { name: "a start version not in the catalog", v: view(base), from: "v1.32.3", to: "v1.34.6", want: ["v1.33.5", "v1.34.6"] },
    { name: "patch upgrade is one hop", v: view(base), from: "v1.34.1", to: "v1.34.6", want: ["v1.34.6"] },
    { name: "next minor is one hop", v: view(base), from: "v1.34.1", to: "v1.35.0", want: ["v1.35.0"] },
    { name: "already there", v: view(base), from: "v1.35.2", to: "v1.35.2", want: [] },
    {
      name: "blocked release routed around",
      v: view(base.map((r) => (r.version === "v1.34.6" ? { ...r, blocked: true } : r))),
      from: "v1.33.5",
      to: "v1.35.2",
      want: ["v1.34.2", "v1.35.2"],
    },
    {
      name: "blocked edge routed around",
      v: view(base, { blockedEdges: [["v1.33.5", "v1.34.6"]] }),
      from: "v1.33.5",
      to: "v1.35.2",
      want: ["v1.34.2", "v1.35.2"],
    },
    {
      name: "allowed-from forces a detour through an exact version",
      v: view(base.map((r) => (r.version === "v1.35.2" ? { ...r, allowedFrom: ["v1.34.2"] } : r))),
      from: "v1.33.5",
      to: "v1.35.2",
      want: ["v1.34.2", "v1.35.2"],
    },
    {
      name: "allowed-from by minor",
      v: view(base.map((r) => (r.version === "v1.34.6" ? { ...r, allowedFrom: ["v1.34"] } : r))),
      from: "v1.33.5",
      to: "v1.34.6",
      want: ["v1.34.2", "v1.34.6"],
    },
    {
      name: "pre-release is never an intermediate hop but can be the target",
      v: view(base),
      from: "v1.35.0",
      to: "v1.36.0-rc.1",
      want: ["v1.36.0-rc.1"],
    },
    { name: "downgrade refused", v: view(base), from: "v1.35.0", to: "v1.34.6", err: /downgrade refused/ },
    {
      name: "no path: a missing minor",
      v: view([rel("v1.31.0"), rel("v1.33.5")]),
      from: "v1.31.0",
      to: "v1.33.5",
      err: /furthest reachable release is v1.31.0.*no unblocked v1.32 release/,
    },
    {
      name: "no path: every release of a minor is blocked",
      v: view(base.map((r) => (r.version.startsWith("v1.34") ? { ...r, blocked: true } : r))),
      from: "v1.33.5",
      to: "v1.35.2",
      err: /no unblocked v1.34 release/,
    },
    {
      name: "wrong board",
      v: view(base.map((r) => (r.version === "v1.35.2" ? { ...r, boards: ["rpi4"] } : r))),
      from: "v1.34.6",
      to: "v1.35.2",
      board: B,
      err: /no image for board ls1046a/,
    },
    {
      name: "board filter skips intermediates without an image",
      v: view(base.map((r) => (r.version === "v1.34.6" ? { ...r, boards: ["rpi4"] } : r))),
      from: "v1.33.5",
      to: "v1.35.2",
      board: B,
      want: ["v1.34.2", "v1.35.2"],
    },
    { name: "unknown target", v: view(base), from: "v1.33.5", to: "v1.99.0", err: /not in the catalog/ },
    { name: "major change has no edge", v: view([rel("v1.35.0"), rel("v2.0.0")]), from: "v1.35.0", to: "v2.0.0", err: /changes the major version/ },
  ];
  for (const c of cases) {
    it(c.name, () => {
      if (c.err) expect(() => findPath(c.v, c.from, c.to, c.board)).toThrow(c.err);
      else expect(findPath(c.v, c.from, c.to, c.board)).toEqual(c.want);
    });
  }
});

describe("resolveTarget", () => {
  const v = view(
    base.map((r) => (r.version === "v1.35.2" ? { ...r, blocked: true, blockReason: "etcd regression" } : r)),
    { aliases: { stable: "v1.34.6", broken: "v1.35.2", ghost: "v1.20.0" } },
  );
  const cases: Array<{ target: string; board?: string; want?: [string, string]; err?: RegExp }> = [
    { target: "v1.34.2", want: ["v1.34.2", "exact"] },
    { target: "v1.35", want: ["v1.35.0", "minor"] },
    { target: "v1.34", want: ["v1.34.6", "minor"] },
    { target: "latest", want: ["v1.35.0", "alias"] },
    { target: "stable", want: ["v1.34.6", "alias"] },
    { target: "v1.36", err: /no unblocked release of v1.36/ },
    { target: "v1.35.2", err: /blocked: etcd regression/ },
    { target: "broken", err: /points at v1.35.2, which is blocked/ },
    { target: "ghost", err: /not in the catalog/ },
    { target: "nightly", err: /unknown target "nightly".*broken, ghost, latest, stable/ },
    { target: "v1.34.2", board: "x86", err: /no image for board x86/ },
    { target: "v1.3x", err: /not a release version/ },
  ];
  for (const c of cases) {
    it(`${c.target}${c.board ? ` on ${c.board}` : ""}`, () => {
      if (c.err) expect(() => resolveTarget(v, c.target, c.board)).toThrow(c.err);
      else {
        const r = resolveTarget(v, c.target, c.board);
        expect([r.version, r.kind]).toEqual(c.want);
      }
    });
  }
});

describe("graphEdges", () => {
  it("has exactly the edges the rules allow", () => {
    const edges = graphEdges(
      view([rel("v1.33.1"), rel("v1.34.0"), rel("v1.34.1", { blocked: true }), rel("v1.35.0")], { blockedEdges: [["v1.33.1", "v1.34.0"]] }),
    );
    expect(edges).toEqual([
      { from: "v1.34.1", to: "v1.35.0" },
      { from: "v1.34.0", to: "v1.35.0" },
    ]);
  });
});
