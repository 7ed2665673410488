import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["libs/*/test/**/*.test.ts", "services/*/test/**/*.test.ts", "cli/test/**/*.test.ts", "test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Tests that start processes use random ports and temp dirs, so files run in parallel.
    pool: "forks",
    globalSetup: ["./test/global-setup.ts"],
    // .ci/run sets FERRY_TEST_REPORT to also get a JSON report it can count.
    reporters: process.env.FERRY_TEST_REPORT ? ["default", ["json", { outputFile: process.env.FERRY_TEST_REPORT }]] : ["default"],
  },
});
