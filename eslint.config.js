// Lint: typescript-eslint with type information (floating promises, misused promises).
// Import cycles are checked by dpdm (npm run lint:cycles). Generated code (gen/) is excluded.
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["**/gen/**", "**/dist/**", "node_modules/**", "coverage/**", ".ferry/**"] },
  {
    files: ["**/*.ts"],
    extends: [tseslint.configs.base],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: { arguments: false } }],
      "@typescript-eslint/await-thenable": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/consistent-type-imports": "error",
      "@typescript-eslint/no-explicit-any": "error",
      "no-console": "error",
      eqeqeq: ["error", "smart"],
    },
  },
  // Scripts and benchmarks talk to a terminal.
  { files: ["scripts/**", "bench/**"], rules: { "no-console": "off" } },
);
