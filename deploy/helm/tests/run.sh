#!/usr/bin/env bash
# The Helm chart tests: render defaults and every example with Helm's own engine, lint, strict
# Kubernetes validation, `heddle-switch --check` on each rendered switch config, the values
# schema's refusals. Needs the venv of deploy/scripts/install-py.sh and built binaries.
#
# Usage: deploy/helm/tests/run.sh [pytest args]
#   HEDDLE_BIN_DIR  heddle-switch / heddle-manager (default: $CARGO_TARGET_DIR/debug, else <repo>/target/debug)
#   HEDDLE_VENV     the venv (default /opt/heddle/venv)
set -euo pipefail
cd "$(dirname "$0")/../../.."
VENV=${HEDDLE_VENV:-/opt/heddle/venv}
TARGET=${CARGO_TARGET_DIR:-target}
[[ "$TARGET" = /* ]] || TARGET=$PWD/$TARGET
export HEDDLE_BIN_DIR=${HEDDLE_BIN_DIR:-$TARGET/debug}
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "run.sh: no venv at $VENV: run deploy/scripts/install-py.sh first" >&2
    exit 1
fi
export PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q deploy/helm/tests "$@"
