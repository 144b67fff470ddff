#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then formatting,
# lints and every test (unit, property, integration across real TLS, real WebSocket
# clients and the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
PY=${PYTHON:-python3}
export PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export CARGO_TERM_COLOR=never
# One build from a clean tree: incremental state would only add gigabytes to the disk a
# CI machine has (the target directory, not the time, is what ran out).
export CARGO_INCREMENTAL=0
cargo fmt --all -- --check
"$PY" scripts/check_layout.py # STYLE.md: no import circle, no module over 15 KiB
cargo clippy --workspace --all-targets --locked -- -D warnings
bash scripts/fuzz.sh 3 # every fuzz target builds and runs 3 s on its seeds (fuzz/README.md)
# The fuzz workspace's build (ASan binaries, ~2 GB) serves nothing after this step: free
# it before the test build. Its logs (fuzz/target/fuzz-logs) stay.
find fuzz/target -mindepth 1 -maxdepth 1 ! -name fuzz-logs -exec rm -rf {} +
# deny.toml: no ring or openssl, one major version of tonic, prost, rustls and hyper,
# accepted licenses, crates.io only (advisories need the RustSec database: docs/security.md).
cargo deny --locked check bans licenses sources
cargo test --workspace --locked
