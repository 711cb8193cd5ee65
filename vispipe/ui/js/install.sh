#!/usr/bin/env bash
# Installs the web UI's browser packages (TF.js) into vispipe/ui/js/node_modules
# from the npm registry; `vispipe ui` serves them itself, no CDN.
# Usage: bash vispipe/ui/js/install.sh   (from a Makefile: `bash vispipe/ui/js/install.sh`)
set -euo pipefail
cd "$(dirname "$0")"
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi
test -f node_modules/@tensorflow/tfjs/dist/tf.es2017.min.js
