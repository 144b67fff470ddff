#!/usr/bin/env bash
# Builds the Palisade image on this machine, offline, and smoke-runs it. Not part of CI.
#
#   scripts/build-image.sh [IMAGE]        (default IMAGE: localhost/palisade:<version>)
#
# 1. podman, buildah, runc and debootstrap from Debian's apt (as root; once).
# 2. The release binary, built on the host: `cargo build --release --locked -p palisade`
#    (see the Dockerfile for why the host builds it).
# 3. A Debian bookworm minbase made with debootstrap from the mirror apt uses, imported
#    as localhost/palisade-base:bookworm (once; PALISADE_REBUILD_BASE=1 makes it again).
# 4. `podman build --runtime runc --network none`: nothing is fetched during the build.
# 5. Smoke: `palisade --version`, then `node --check-config` and `controller
#    --check-config` inside the image on the configuration rendered by the chart, with
#    openssl-made certificates at the paths the chart mounts; read-only, uid 65532, no
#    network.
# Builds run under `nice -n 19` (the machine has 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE=${1:-localhost/palisade:$VERSION}
BASE=localhost/palisade-base:bookworm
PODMAN=(podman --runtime runc)
# This VM refuses the default rlimits of a container: set them explicitly (build and run).
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

need=()
for t in podman buildah runc debootstrap openssl; do command -v "$t" >/dev/null 2>&1 || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v helm >/dev/null 2>&1 || bash scripts/install-helm.sh

echo "== release binary"
nice -n 19 cargo build --release --locked -p palisade
# The Dockerfile takes target/release/palisade from the build context, wherever cargo's
# target directory is (CARGO_TARGET_DIR).
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if [ "$(realpath "$target_dir")" != "$(realpath -m target)" ]; then
  mkdir -p target/release
  cp "$target_dir/release/palisade" target/release/palisade
fi

if [ "${PALISADE_REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$BASE"; then
  echo "== base image $BASE (debootstrap minbase bookworm)"
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)
  root=$(mktemp -d)
  nice -n 19 debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >/dev/null
  tar -C "$root" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$root"
fi

echo "== podman build $IMAGE"
# docker format: the OCI format ignores SHELL (pipefail in the build stage).
nice -n 19 "${PODMAN[@]}" build --format docker --network none "${LIMITS[@]}" \
  --build-arg "BASE=$BASE" -t "$IMAGE" -f Dockerfile .

echo "== smoke: --version"
"${PODMAN[@]}" run --rm "${LIMITS[@]}" --network none --read-only "$IMAGE" --version

echo "== smoke: --check-config on the chart's configuration"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
etc="$work/etc/palisade"
mkdir -p "$etc"/{config,policy,wss,control,controller}
# A CA, the WSS certificate, and the node and controller identities with their role URIs.
cnf="$work/ext.cnf"
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key" 2>/dev/null
openssl req -x509 -new -key "$work/ca.key" -subj "/CN=Palisade smoke CA" -days 30 -out "$work/ca.crt" 2>/dev/null
leaf() { # DIR SAN...
  local dir=$1 san=$2
  openssl ecparam -name prime256v1 -genkey -noout -out "$work/k.pem" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$work/k.pem" -out "$dir/tls.key"
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$cnf"
  openssl req -new -key "$dir/tls.key" -subj "/CN=palisade" 2>/dev/null |
    openssl x509 -req -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 30 -extfile "$cnf" -out "$dir/tls.crt" 2>/dev/null
  cp "$work/ca.crt" "$dir/ca.crt"
}
leaf "$etc/wss" "DNS:ws.example.com"
leaf "$etc/control" "DNS:palisade-node-control,URI:spiffe://palisade/default/node/any"
leaf "$etc/controller" "DNS:palisade-controller,URI:spiffe://palisade/default/controller"
# The chart's ConfigMaps, with a bootstrap policy holding a real public key.
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl ec -pubout 2>/dev/null > "$work/signing.pub"
python3 - "$work/signing.pub" > "$work/values.json" <<'PY'
import json, sys
pem = open(sys.argv[1]).read()
print(json.dumps({"policy": {"document": {
    "origins": {"allow": ["https://app.example.com"]},
    "auth": {"carriers": ["header"], "keys": [{"kid": "smoke", "alg": "ES256", "public_key_pem": pem}]}}}}))
PY
helm template smoke helm/palisade -f "$work/values.json" --show-only templates/configmap.yaml > "$work/cm.yaml"
python3 - "$work/cm.yaml" "$etc" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc:
        continue
    name = doc["metadata"]["name"]
    sub = "policy" if name.endswith("-policy") else "config"
    for key, value in doc["data"].items():
        open(f"{sys.argv[2]}/{sub}/{key}", "w").write(value)
PY
chmod -R a+rX "$work"
for component in node controller; do
  echo "-- palisade $component --check-config"
  "${PODMAN[@]}" run --rm "${LIMITS[@]}" --network none --read-only --user 65532:65532 -v "$etc:/etc/palisade:ro" \
    "$IMAGE" "$component" --config "/etc/palisade/config/$component.toml" --check-config
done
echo "== $IMAGE: $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE") bytes"
