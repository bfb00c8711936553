#!/usr/bin/env node
// Compile contracts/src/*.sol with the pinned solc-js (offline) into contracts/artifacts/*.json.
// Output is deterministic (sorted keys, fixed settings) so a test can recompile and compare.
// Usage: node contracts/build.mjs [--out DIR]
import { createRequire } from "node:module";
import { readdirSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

// Paris: no PUSH0, so the bytecode runs on py-evm, anvil and London-era Besu QBFT networks alike.
const EVM_VERSION = "paris";
const OPTIMIZER = { enabled: true, runs: 200 };

const here = dirname(fileURLToPath(import.meta.url));
const srcDir = join(here, "src");
const outIdx = process.argv.indexOf("--out");
const outDir = outIdx > 0 ? process.argv[outIdx + 1] : join(here, "artifacts");

const sources = {};
for (const name of readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[name] = { content: readFileSync(join(srcDir, name), "utf8") };
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: EVM_VERSION,
    viaIR: true,
    optimizer: OPTIMIZER,
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length > 0) process.exit(1);

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys(value[k])]));
  }
  return value;
}

mkdirSync(outDir, { recursive: true });
const written = [];
for (const file of Object.keys(output.contracts).sort()) {
  for (const [name, c] of Object.entries(output.contracts[file])) {
    if (!c.evm.bytecode.object) continue; // interfaces have no bytecode
    const artifact = sortKeys({
      contractName: name,
      sourceName: file,
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
      compiler: { solc: solc.version(), evmVersion: EVM_VERSION, optimizer: OPTIMIZER, viaIR: true },
    });
    writeFileSync(join(outDir, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
    written.push(name);
  }
}
console.log(`compiled ${written.join(", ")} with solc ${solc.version()} (evm ${EVM_VERSION}) into ${outDir}`);
