#!/usr/bin/env bash
# Installs the Autobahn TestSuite fuzzing client (`wstest`) that tests/autobahn.rs drives,
# in its own Python 2.7 virtualenv. The suite runs on Python 2.7 only; the global 2.7 is
# never touched: the virtualenv is made from pyenv's 2.7.18 by `virtualenv<20.22` (the
# last line that still creates 2.7 environments), which itself lives in a python3 venv.
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/palisade/virtualenv-tool   python3 venv holding virtualenv
#   ${XDG_CACHE_HOME:-$HOME/.cache}/palisade/autobahn          the 2.7 venv; bin/wstest
#
# Idempotent: a complete install (marker file matching the pins below) is left as it is;
# an incomplete one is removed and made again. Only PyPI is used. Prints the wstest path.
# Without pyenv's 2.7.18 it says so and exits 0: the test then fails with its own message.
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/palisade"
VENV="$CACHE/autobahn"
TOOL="$CACHE/virtualenv-tool"
PY27="${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python2.7"
PY3="${PYTHON:-python3}"

# The whole resolved set, pinned, so the install is reproducible (autobahntestsuite
# 25.10.1 pins its direct dependencies; the transitive ones are pinned here).
PINS=(
  autobahntestsuite==25.10.1
  Automat==22.10.0
  PyHamcrest==1.10.1
  Twisted==19.10.0
  Werkzeug==1.0.1
  argparse==1.4.0
  attrs==21.4.0
  autobahn==0.10.9
  cffi==1.15.1
  constantly==15.1.0
  cryptography==3.3.2
  enum34==1.1.10
  hyperlink==21.0.0
  idna==2.10
  incremental==16.10.1
  ipaddress==1.0.23
  Jinja2==2.11.3
  klein==17.10.0
  linecache2==1.0.0
  MarkupSafe==1.1.1
  pyOpenSSL==19.1.0
  pyasn1==0.5.1
  pyasn1-modules==0.3.0
  pycparser==2.21
  service-identity==18.1.0
  setuptools==44.0.0
  six==1.16.0
  traceback2==1.4.0
  txaio==2.1.0
  typing==3.10.0.0
  ujson==2.0.3
  unittest2==1.1.0
  wsaccel==0.6.6
  zope.interface==4.6.0
)
MARKER="$VENV/.palisade-installed"
want_marker="$(printf '%s\n' "${PINS[@]}")"

if [ -x "$VENV/bin/wstest" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$want_marker" ]; then
  echo "autobahn testsuite ready: $VENV/bin/wstest"
  exit 0
fi

if [ ! -x "$PY27" ]; then
  echo "install-autobahn: pyenv's Python 2.7.18 is not at $PY27;" >&2
  echo "install-autobahn: Autobahn TestSuite (wstest) needs Python 2.7, so it is NOT installed" >&2
  echo "install-autobahn: (tests/autobahn.rs will fail saying so)" >&2
  exit 0
fi

start=$(date +%s)
mkdir -p "$CACHE"

# virtualenv<20.22 in a python3 venv of its own.
if [ ! -x "$TOOL/bin/virtualenv" ]; then
  rm -rf "$TOOL"
  "$PY3" -m venv "$TOOL"
  "$TOOL/bin/python" -m pip install -q 'virtualenv==20.21.1' # last release before 20.22 dropped Python 2.7 targets
fi

# The 2.7 venv, from scratch (a partial one is not trusted).
rm -rf "$VENV"
"$TOOL/bin/virtualenv" -q -p "$PY27" "$VENV"
"$VENV/bin/python" -m pip install -q --no-python-version-warning --no-warn-script-location "${PINS[@]}"
"$VENV/bin/wstest" --help >/dev/null
printf '%s\n' "$want_marker" >"$MARKER"

echo "autobahn testsuite installed in $(( $(date +%s) - start )) s"
echo "autobahn testsuite ready: $VENV/bin/wstest"
