#!/usr/bin/env bash
# VNN-COMP entry point: prepare_instance.sh VERSION BENCHMARK ONNX VNNLIB
# Checks that lipcert can convert the model and parse the property (exit 1 with one line if not).
# Python interpreter: $LIPCERT_PYTHON (default python3).
set -euo pipefail
if [ "$#" -ne 4 ]; then
    echo "usage: $0 VERSION BENCHMARK ONNX VNNLIB" >&2
    exit 1
fi
ONNX=$3
VNNLIB=$4
exec "${LIPCERT_PYTHON:-python3}" -c '
import sys
import lipcert
from lipcert.adapters.vnnlib import read_vnnlib
from lipcert.errors import LipcertError
try:
    lipcert.load(sys.argv[1])
    read_vnnlib(sys.argv[2])
except LipcertError as exc:
    sys.exit(f"prepare_instance: {exc}")
' "$ONNX" "$VNNLIB"
