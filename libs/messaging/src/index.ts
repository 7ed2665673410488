export * from "./names.ts";
export * from "./connection.ts";
