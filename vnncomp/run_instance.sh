#!/usr/bin/env bash
# VNN-COMP entry point: run_instance.sh VERSION BENCHMARK ONNX VNNLIB RESULTFILE TIMEOUT
# Writes unsat / sat (with the counterexample) / unknown / timeout to RESULTFILE.
# Python interpreter: $LIPCERT_PYTHON (default python3).
set -euo pipefail
if [ "$#" -ne 6 ]; then
    echo "usage: $0 VERSION BENCHMARK ONNX VNNLIB RESULTFILE TIMEOUT" >&2
    exit 1
fi
exec "${LIPCERT_PYTHON:-python3}" -m lipcert vnnlib "$3" "$4" --out "$5" --timeout "$6"
