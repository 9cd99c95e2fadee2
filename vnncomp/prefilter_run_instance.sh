#!/usr/bin/env bash
# lipcert as a pre-filter in front of another VNN-COMP tool (same arguments as run_instance.sh):
#   NEXT_RUN_INSTANCE=/path/to/other_tool/run_instance.sh prefilter_run_instance.sh VERSION BENCHMARK ONNX VNNLIB RESULTFILE TIMEOUT
# lipcert runs first with a budget of $LIPCERT_BUDGET seconds (default: a tenth of TIMEOUT, at least 1);
# unsat or sat is final; unknown or timeout hands the instance to $NEXT_RUN_INSTANCE with the time left.
set -euo pipefail
if [ "$#" -ne 6 ]; then
    echo "usage: NEXT_RUN_INSTANCE=... $0 VERSION BENCHMARK ONNX VNNLIB RESULTFILE TIMEOUT" >&2
    exit 1
fi
: "${NEXT_RUN_INSTANCE:?set NEXT_RUN_INSTANCE to the run_instance.sh of the verifier to fall back on}"
HERE=$(cd "$(dirname "$0")" && pwd)
BUDGET=${LIPCERT_BUDGET:-$(awk -v t="$6" 'BEGIN { b = t / 10; print (b < 1 ? 1 : b) }')}
START=$(date +%s.%N)
"$HERE/run_instance.sh" "$1" "$2" "$3" "$4" "$5" "$BUDGET" || true
STATUS=$(head -n 1 "$5" 2>/dev/null || echo error)
if [ "$STATUS" = "unsat" ] || [ "$STATUS" = "sat" ]; then
    exit 0
fi
LEFT=$(awk -v t="$6" -v s="$START" -v n="$(date +%s.%N)" 'BEGIN { l = t - (n - s); print (l < 1 ? 1 : l) }')
exec "$NEXT_RUN_INSTANCE" "$1" "$2" "$3" "$4" "$5" "$LEFT"
