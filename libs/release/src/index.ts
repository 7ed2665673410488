export * from "./semver.ts";
export * from "./manifest.ts";
export * from "./image.ts";
