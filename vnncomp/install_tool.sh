#!/usr/bin/env bash
# VNN-COMP entry point: install_tool.sh VERSION -- installs lipcert from this checkout (CPU torch).
set -euo pipefail
cd "$(dirname "$0")/.."
"${LIPCERT_PYTHON:-python3}" -m pip install torch==2.13.0 -e .
