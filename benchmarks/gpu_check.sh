#!/usr/bin/env bash
# One GPU check, under 8 minutes, run as-is from the repository root on a machine with a CUDA device:
#   1. the test suite's CUDA tests (pytest -m cuda: CUDA against CPU maps, the CRF on CUDA),
#   2. benchmarks/throughput.py --device cuda for the methods whose weights are in COSAL_HOME, in fp32
#      and bf16 (one round),
#   3. gicd on 224 px JPEGs, the issue's 1,000 images/s figure: fp32 and bf16, decoded by Pillow and by
#      nvJPEG (--gpu-decode), batch size 50,
#   4. benchmarks/crf_speed.py --cuda.
# Everything goes to one result file (first argument, default gpu_check.txt; $OUT/gpu_check.txt when
# OUT is set). cosal is run from this checkout (PYTHONPATH), so only its dependencies must be
# installed; the weights come from COSAL_HOME (default .gpu-cache/, which `cosal weights pull` fills
# and which can be copied to a machine without network). Exit: 0 all ran, 1 a step failed, 2 no CUDA.
#
# Getting the weights to a machine that only receives this checkout (the project's device tool: the
# working tree, about 41 MiB with the bundled heads, plus what `carry` names, 64 MiB in all):
#   EfficientNet-Lite0 (18.8 MB) travels in one call, enough for gicd's figures and tests:
#     mkdir -p .gpu-cache/weights && cp "$(cosal weights path efficientnet-lite0-imagenet)" .gpu-cache/weights/
#     then carry .gpu-cache.
#   VGG-16 (58.9 MB) cannot travel in one call. Split it into parts named after the file
#     (split -b 20M "$(cosal weights path vgg16-imagenet)" .gpu-cache/parts/<its file name>.part-), carry one
#     part per call to the same warm machine (ignored files stay there between calls), and this script
#     joins them into weights/ (the hub verifies the sha256 of the joined file before any use).
set -uo pipefail
cd "$(dirname "$0")/.."
result=${1:-${OUT:+$OUT/}gpu_check.txt}
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export COSAL_HOME=${COSAL_HOME:-$PWD/.gpu-cache} COSAL_OFFLINE=1
failed=0

join_parts() {  # .gpu-cache/parts/NAME.part-aa, -ab, ... -> $COSAL_HOME/weights/NAME (when not there yet)
    local first name
    for first in "$COSAL_HOME"/parts/*.part-aa; do
        [ -e "$first" ] || continue
        name=$(basename "$first" .part-aa)
        [ -e "$COSAL_HOME/weights/$name" ] && continue
        mkdir -p "$COSAL_HOME/weights"
        cat "$COSAL_HOME/parts/$name".part-* > "$COSAL_HOME/weights/$name.joining" &&
            mv "$COSAL_HOME/weights/$name.joining" "$COSAL_HOME/weights/$name"
    done
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, everything into the result file
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$result"
    timeout "$limit" "$@" >> "$result" 2>&1
    local code=$?
    echo "== $name: exit $code" | tee -a "$result"
    [ "$code" -eq 0 ] || failed=1
}

: > "$result"
join_parts
{ echo "cosal gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"; git rev-parse --short HEAD 2>/dev/null; nvidia-smi -L 2>&1; } \
    >> "$result"
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" >> "$result" 2>&1; then
    echo "no CUDA device visible to $python (torch.cuda.is_available() is False): nothing to check" | tee -a "$result"
    exit 2
fi
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    >> "$result" 2>&1

step "CUDA tests" 120 "$python" -m pytest -q -m cuda -p no:cacheprovider tests
methods=$("$python" - <<'EOF'
from cosal_cli.hub import WeightHub
hub = WeightHub()
ready = [m for m in ("gicd", "sod", "icnet", "csmg-mask", "gs", "gwd")
         if all(hub.verify(hub.manifest.component(c)).state == "ok" for c in hub.manifest.roles(m).values())]
print(" ".join(ready))
EOF
)
if [ -n "$methods" ]; then
    # shellcheck disable=SC2086 (one word per method)
    step "throughput on CUDA" 180 "$python" benchmarks/throughput.py --device cuda --rounds 1 --methods $methods \
        --precision fp32 bf16
    case " $methods " in
        *" gicd "*)
            step "gicd at 224 px on CUDA" 120 "$python" benchmarks/throughput.py --device cuda --rounds 2 \
                --methods gicd --precision fp32 bf16 --decode pillow gpu --resize 224 --batch-size 50 --threads 4 ;;
    esac
else
    echo "no method's weights in $COSAL_HOME: throughput skipped (cosal weights pull gicd, then copy the cache)" \
        | tee -a "$result"
fi
if [ -f benchmarks/crf_speed.py ]; then
    step "dense CRF on CUDA" 45 "$python" benchmarks/crf_speed.py --cuda --rounds 3
fi
echo "result: $result"
exit "$failed"
