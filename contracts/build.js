// The one compile command: `node contracts/build.js` (or `make contracts`).
// Compiles contracts/src/*.sol with the pinned solcjs from node_modules and writes
// contracts/build/<Name>.json = {contractName, abi, bytecode, deployedBytecode, immutableReferences, compiler}.
// `node contracts/build.js --check` compiles and exits 1 if any committed artifact differs.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

// Pinned settings. cancun: transient storage (EIP-1153) for the reentrancy guard, and py-evm's
// PragueVM (the embedded chain) and anvil both run it.
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 10000 },
  viaIR: true,
  metadata: { bytecodeHash: "none", appendCBOR: false },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "evm.deployedBytecode.immutableReferences"] } },
};
const PUBLISHED = ["BatchSettlement", "ERC3009DepositCollector", "TestUSDC", "ModelRegistry"];
// Test-only contracts (contracts/src/testing/) go to contracts/build/testing/.
const TESTING = ["ReentrantToken"];

const root = path.resolve(__dirname, "..");
const srcDir = path.join(__dirname, "src");
const outDir = path.join(__dirname, "build");

function findImport(p) {
  for (const base of [srcDir, path.join(root, "node_modules")]) {
    const full = path.join(base, p);
    if (fs.existsSync(full)) return { contents: fs.readFileSync(full, "utf8") };
  }
  return { error: `not found: ${p}` };
}

function compile() {
  const sources = {};
  for (const f of fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
    sources[f] = { content: fs.readFileSync(path.join(srcDir, f), "utf8") };
  }
  for (const f of fs.readdirSync(path.join(srcDir, "testing")).filter((f) => f.endsWith(".sol")).sort()) {
    sources[`testing/${f}`] = { content: fs.readFileSync(path.join(srcDir, "testing", f), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const out = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (out.errors || []).filter((e) => e.severity === "error");
  if (errors.length) {
    for (const e of errors) console.error(e.formattedMessage);
    process.exit(1);
  }
  const artifacts = {};
  for (const [file, contracts] of Object.entries(out.contracts)) {
    for (const [name, c] of Object.entries(contracts)) {
      const wanted = PUBLISHED.includes(name) ? name : TESTING.includes(name) ? `testing/${name}` : null;
      if (!wanted || !file.startsWith(wanted)) continue;
      artifacts[name] = {
        contractName: name,
        compiler: { solc: solc.version(), settings: { evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer, viaIR: SETTINGS.viaIR } },
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        deployedBytecode: "0x" + c.evm.deployedBytecode.object,
        immutableReferences: c.evm.deployedBytecode.immutableReferences || {},
      };
    }
  }
  return artifacts;
}

const check = process.argv.includes("--check");
const artifacts = compile();
let stale = 0;
fs.mkdirSync(outDir, { recursive: true });
fs.mkdirSync(path.join(outDir, "testing"), { recursive: true });
for (const name of [...PUBLISHED, ...TESTING]) {
  if (!artifacts[name]) { console.error(`missing contract ${name}`); process.exit(1); }
  const text = JSON.stringify(artifacts[name], null, 2) + "\n";
  const file = path.join(outDir, TESTING.includes(name) ? "testing" : "", `${name}.json`);
  if (check) {
    if (!fs.existsSync(file) || fs.readFileSync(file, "utf8") !== text) { console.error(`stale: ${file}`); stale++; }
  } else {
    fs.writeFileSync(file, text);
    console.log(`wrote ${path.relative(root, file)} (${(artifacts[name].deployedBytecode.length - 2) / 2} bytes runtime)`);
  }
}
process.exit(stale ? 1 : 0);
