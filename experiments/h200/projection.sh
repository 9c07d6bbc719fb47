#!/usr/bin/env bash
# The Pallas projection kernels on one H200: check and tune them against XLA
# (projection_kernel.py, which writes the tuning table), then profile each shape with
# SPECJAX_PROJECTION=xla and =pallas (the tuned table), same settings, each in its own process.
#
#   SHAPES="qwen2.5-1.5b,qwen2.5-0.5b,smollm2-135m" OUT=/tmp/out bash experiments/h200/projection.sh
#
# BUDGET_S: the kernel sweep's budget (default 150 s); WHAT: profile sections (default
# step,ar; the table's kernels_per_layer_hlo column counts kernels per decoder layer).
# Everything lands in $OUT/projection: projection_kernel.{json,md}, profile JSONs, logs and
# the xla-vs-pallas table (table.md).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
WORK="$OUT/projection"
mkdir -p "$WORK"
SHAPES=${SHAPES:-qwen2.5-1.5b,qwen2.5-0.5b,smollm2-135m}
COMMON="--context=512 --new_tokens=128 --repeats=5 --gamma=4 --notrace"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv | tee "$WORK/gpu.txt"
PYTHONPATH=$PWD timeout "${TUNE_S:-420}" python experiments/h200/projection_kernel.py \
  --out="$WORK" --budget_s="${BUDGET_S:-150}" 2>&1 | tee "$WORK/kernel.log"
TUNING="$WORK/projection_kernel.json"
[ -f "$TUNING" ] || { echo "no tuning table: the pallas runs use the default rule"; TUNING=""; }
for shape in ${SHAPES//,/ }; do
  for policy in xla pallas; do
    SPECJAX_PROJECTION=$policy SPECJAX_PROJECTION_TUNING="$TUNING" timeout "${PROFILE_S:-240}" \
      python -m experiments.profile --shape="$shape" --what="${WHAT:-step,ar}" --label="$policy" \
      --out="$WORK/profile" $COMMON 2>&1 | tee -a "$WORK/profile.log"
  done
done
reports=$(ls "$WORK"/profile/*.json 2>/dev/null | paste -sd, -)
if [ -n "$reports" ]; then
  python -m experiments.profile --report="$reports" | tee "$WORK/table.md"
else
  echo "no profile JSON was written: see $WORK/profile.log" | tee "$WORK/table.md"
fi
