export * from "./permissions.ts";
export * from "./site-auth.ts";
