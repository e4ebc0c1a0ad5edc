#!/usr/bin/env bash
# Sets up contrastlab in the virtual environment .venv without pulling a second torch. When the
# python3 on PATH already has a working torch (e.g. your CUDA build), .venv sees it through
# --system-site-packages and keeps it; otherwise torch 2.13.0 (the CPU wheel) is installed
# first. Either way torch is then pinned by a constraints file on every pip call.
#   bash install.sh          # the library and its command
#   bash install.sh --dev    # plus the test tools
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

py=".venv/bin/python"
if [[ ! -x "$py" ]]; then
    if python3 -c "import torch" 2>/dev/null; then
        python3 -m venv --system-site-packages .venv
    else
        python3 -m venv .venv
    fi
fi

if ! "$py" -c "import torch" 2>/dev/null; then
    "$py" -m pip install --quiet "torch==2.13.0"
fi
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$py" -c "import torch; print('torch==' + torch.__version__)" > "$constraints"
"$py" -m pip install --quiet --constraint "$constraints" --editable ".$extras"
echo "contrastlab installed in $("$py" -c 'import sys; print(sys.prefix)') with $(cat "$constraints")" >&2
