#!/usr/bin/env bash
# Create a virtual environment (default .venv, or $VENV) with everything the repository needs.
# The pinned torch wheel from PyPI is built for a recent CUDA and needs a recent NVIDIA driver;
# for an older driver take the same versions from PyTorch's index of a CUDA that the driver
# supports (nvidia-smi shows it), e.g.:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 ./install_requirements.sh
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    # torch and torchvision at the versions requirements.txt pins, which the next step then keeps.
    mapfile -t torch_pins < <(grep -E '^(torch|torchvision)==' requirements.txt)
    "$VENV/bin/python" -m pip install --quiet --index-url "$TORCH_INDEX_URL" "${torch_pins[@]}"
fi
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
echo "installed into $VENV; activate it with: . $VENV/bin/activate"
