#!/usr/bin/env bash
# Installs what `palisade-bench node-reference` needs: Node.js (apt `nodejs` and `npm` when
# missing) and the reference design's npm packages (ws, jsonwebtoken), exactly as locked in
# benches/node-reference/package-lock.json (`npm ci`). Idempotent. The bench runs this
# itself when benches/node-reference/node_modules is missing.
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../benches/node-reference" && pwd)"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing with apt: nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi
if [ -f "$dir/node_modules/.package-lock.json" ] && cmp -s <(cd "$dir" && node -e 'const l=require("./package-lock.json");process.stdout.write(JSON.stringify(l.packages[""].dependencies))') \
    <(cd "$dir" && node -e 'const p=require("./package.json");process.stdout.write(JSON.stringify(p.dependencies))') \
    && [ -d "$dir/node_modules/ws" ] && [ -d "$dir/node_modules/jsonwebtoken" ]; then
  echo "node-reference packages present in $dir/node_modules"
else
  echo "npm ci in $dir"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "node $(node --version), ws $(cd "$dir" && node -p 'require("./node_modules/ws/package.json").version'), jsonwebtoken $(cd "$dir" && node -p 'require("./node_modules/jsonwebtoken/package.json").version')"
