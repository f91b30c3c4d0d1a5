// Validate one glTF/GLB file with the Khronos glTF validator, offline.
// Usage: node validate.js FILE [MAX_ISSUES]
// Prints the validator's JSON report on stdout; exit status 0 whatever the report says
// (the caller reads the counts), 2 if the file cannot be read or the validator throws.
'use strict';
const fs = require('fs');
const path = require('path');
const validator = require('gltf-validator');

const file = process.argv[2];
const maxIssues = Number(process.argv[3] || 100);
if (!file) {
  console.error('usage: node validate.js FILE [MAX_ISSUES]');
  process.exit(2);
}

let bytes;
try {
  bytes = new Uint8Array(fs.readFileSync(file));
} catch (e) {
  console.error(`cannot read ${file}: ${e.message}`);
  process.exit(2);
}

// External resources (a .gltf's .bin or images) are read from beside the file; a GLB has none.
const externalResourceFunction = (uri) => new Promise((resolve, reject) => {
  const target = path.resolve(path.dirname(file), decodeURIComponent(uri));
  fs.readFile(target, (err, data) => (err ? reject(err.toString()) : resolve(new Uint8Array(data))));
});

validator.validateBytes(bytes, { uri: path.basename(file), maxIssues, externalResourceFunction })
  .then((report) => process.stdout.write(JSON.stringify(report)))
  .catch((e) => {
    console.error(`validator failed: ${e}`);
    process.exit(2);
  });
