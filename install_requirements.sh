#!/usr/bin/env bash
# Create a virtual environment (default .venv, or $VENV) with everything the repository needs.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
echo "installed into $VENV; activate it with: . $VENV/bin/activate"
