#!/usr/bin/env bash
# Where a speculative call's time goes at the Qwen2.5-1.5B shape (synthetic bf16 weights, an
# EAGLE head over a 32k draft vocabulary): the chain and the three trees of the benchmarks,
# each split into drafting / verification / accept + commit (`experiments.profile`'s call
# section), the tree loops traced, and the verification cost curve.
#   bash experiments/h200/call_costs.sh OUT_DIR [LABEL_SUFFIX]
set -uo pipefail
OUT=${1:?usage: call_costs.sh OUT_DIR [LABEL_SUFFIX]}
SUFFIX=${2:-}
PY=${PY:-python3}
mkdir -p "$OUT"
P=("$PY" -m experiments.profile --shape=qwen2.5-1.5b --draft_shape=eagle --draft_vocab=32768
   --bandwidth_GBps=4200 --repeats=3 --new_tokens=64 --out="$OUT")
"${P[@]}" --what=step,call --verify_tokens=9,17,29,33 --label="chain$SUFFIX" 2>&1 | tail -40
for pair in "static:4,2,1,1" "dyn16:dynamic:depth=5,top_k=4,nodes=16" \
            "dyn32:dynamic:depth=6,top_k=6,nodes=32"; do
  "${P[@]}" --what=spec,call --tree="${pair#*:}" --label="${pair%%:*}$SUFFIX" 2>&1 | tail -40
done
