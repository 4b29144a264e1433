#!/usr/bin/env bash
# Install the Python tools the chart tests use into a venv (default /opt/heddle/venv):
# helm-python-sdk (Helm v4's own Go engine as a wheel: render and lint with no helm binary),
# kubernetes-validate (OpenAPI schemas of current Kubernetes releases), jsonschema, pyyaml,
# pytest (runs deploy/helm/tests).
# Idempotent: a venv that already has every package (the pinned ones at their version) is left alone.
#
# Usage: deploy/scripts/install-py.sh [venv-dir]   (or HEDDLE_VENV=dir)
set -euo pipefail

VENV=${1:-${HEDDLE_VENV:-/opt/heddle/venv}}
REQUIREMENTS=(
    "helm-python-sdk==0.2.2"
    "kubernetes-validate==1.37.0"
    "jsonschema>=4.18,<5"
    "pyyaml>=6,<7"
    "pytest>=8,<9"
)

have_all() {
    [[ -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - "${REQUIREMENTS[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for req in sys.argv[1:]:
    name = req.split("=")[0].split(">")[0].split("<")[0]
    try:
        v = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if "==" in req and v != req.split("==")[1]:
        sys.exit(1)
PY
}

if have_all; then
    echo "install-py.sh: $VENV already has ${REQUIREMENTS[*]}."
    exit 0
fi

if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    echo "install-py.sh: python3 cannot make a venv here; installing python3-venv."
    "$(dirname "$0")/install-deps.sh" python3 python3-venv
fi

mkdir -p "$(dirname "$VENV")"
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
if ! have_all; then
    echo "install-py.sh: pip finished but $VENV still lacks one of ${REQUIREMENTS[*]}." >&2
    exit 1
fi
echo "install-py.sh: installed ${REQUIREMENTS[*]} into $VENV."
