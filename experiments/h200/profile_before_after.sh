#!/usr/bin/env bash
# "Decode at the memory floor" on one H200: the profile of the package before the layout
# change (.carry/old: `git archive <before> specjax` with the new specjax/bench and
# experiments/profile.py copied in) and after it, same shapes, same settings, one machine,
# each shape in its own process. Then HF transformers at the same shapes.
#
#   SHAPES="llama3-8b" HF=1 bash experiments/h200/profile_before_after.sh
#   SHAPES="qwen2.5-1.5b" VARIANT_FLAGS="--xla_gpu_enable_dot_strength_reduction=false" \
#     VARIANT=no_dot_reduce bash experiments/h200/profile_before_after.sh
#
# VARIANT_FLAGS: extra XLA flags for a third run of the new code, labelled $VARIANT.
#
# Everything lands in $OUT/profile.tgz (JSON per run, logs, the 8B step traces); the
# before/after table is printed last.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
WORK=/tmp/profile_work
mkdir -p "$WORK" "$OUT"
SHAPES=${SHAPES:-llama3-8b}
ACCEPT="$PWD/docs/benchmarks/qwen_pair_gamma4/generations.jsonl"
COMMON="--context=512 --new_tokens=128 --repeats=5 --gamma=4 --accept_from=$ACCEPT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv | tee "$WORK/gpu.txt"
for shape in ${SHAPES//,/ }; do
  what=step,ar,spec
  [ "$shape" = smollm2-135m ] && what=step,ar  # no smaller model of its family to draft
  timeout "${AFTER_S:-240}" python -m experiments.profile --shape="$shape" \
    --what=$what --label=after --out="$WORK/after" $COMMON 2>&1 | tee -a "$WORK/after.log"
  if [ -n "${VARIANT_FLAGS:-}" ]; then
    XLA_FLAGS="${XLA_FLAGS:-} $VARIANT_FLAGS" timeout "${AFTER_S:-240}" python -m \
      experiments.profile --shape="$shape" --what=$what --label="${VARIANT:-variant}" \
      --out="$WORK/after" $COMMON 2>&1 | tee -a "$WORK/variant.log"
  fi
  (cd .carry/old && timeout "${BEFORE_S:-150}" python -m experiments.profile --shape="$shape" \
    --what=step,ar --label=before --out="$WORK/before" $COMMON) 2>&1 | tee -a "$WORK/before.log"
done
if [ "${HF:-0}" = 1 ]; then
  for shape in ${SHAPES//,/ }; do
    timeout "${HF_S:-240}" python - "$shape" <<'PY' 2>&1 | tee -a "$WORK/hf.log"
import json, sys
from specjax.bench.hf import time_hf
from specjax.bench.parallel import SHAPES
shape = sys.argv[1]
rows = time_hf(SHAPES[shape], context=512, new_tokens=128, repeats=3)
open(f"/tmp/profile_work/hf_{shape}.json", "w").write(json.dumps({"shape": shape, "rows": rows}))
PY
  done
fi
reports=$(ls "$WORK"/after/*.json "$WORK"/before/*.json 2>/dev/null | paste -sd, -)
if [ -n "$reports" ]; then
  python -m experiments.profile --report="$reports" | tee "$WORK/table.md"
else
  echo "no profile JSON was written: see the logs" | tee "$WORK/table.md"
fi
mkdir -p "$WORK/traces"  # the step traces (10 steps each; the JSONs name their trace_root)
for root in /tmp/specjax_trace_*; do
  f=$(find "$root/step_target_T1" "$root/step" -name '*.trace.json.gz' 2>/dev/null | head -1)
  [ -n "$f" ] && cp "$f" "$WORK/traces/$(basename "$root").trace.json.gz"
done
tar czf "$OUT/profile.tgz" -C "$WORK" --exclude='*/hlo' .
ls -la "$OUT"
