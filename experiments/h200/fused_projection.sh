#!/usr/bin/env bash
# The Pallas fused decode projections (`SPECJAX_PROJECTION=pallas`) against the XLA path, and
# the rows "Decode at the memory floor" still owed, on one lent H200 in one pass. Run from the
# repository root in the background (setsid); later device calls bring the Qwen GGUFs
# (DEVELOPERS.md):
#
#   SPECJAX_CACHE=~/sc DEADLINE=$(( $(date +%s) + 1500 )) OLD=~/old setsid nohup \
#       bash experiments/h200/fused_projection.sh ~/w > ~/w/run.log 2>&1 &
#
# The lent machine goes back after 30 s without a call, taking the weights and this run
# with it: queue the part calls and then polling calls (`sleep N; cat <work>/status`, up to
# 600 s each) back to back, and edit nothing between them (2026-11-30, sixth session: lost
# again after eight stages, when an interruption on the calling side left a gap of over 30 s
# between two polling calls).
# Stages, most wanted first, each alone on the GPU (a stage that would start after DEADLINE
# is skipped; each logs to <work>/logs/<stage>.log and appends a line to <work>/status):
#   1. the kernels alone (`experiments/h200/projection_kernel.py`): checked against XLA, timed
#      per layer's worth of calls, block configurations swept; the best ones become the
#      tuning table of the stages below;
#   2. profiles with synthetic weights (`experiments.profile`), XLA path ("pad", the default)
#      then the Pallas projections ("pallas_proj"), one process each: the Qwen2.5-1.5B shape
#      (step, AR, spec with a 0.5B-shaped draft replaying the real pair's acceptance), then
#      SmolLM2-135M; the 1.5B loops before the fourth session's loop changes ($OLD) in the
#      same run as "pad" (the before/after owed since then);
#   3. the real Qwen2.5-Coder pair (`experiments.real_pair`), bf16, default path, gamma 1, 2,
#      4 and prompt lookup; then, when the Pallas profile beat the XLA one at 1.5B AR, the
#      same pair with the Pallas projections (gamma 1, 2, prompt lookup);
#   4. HF transformers beside our AR loop at the 1.5B shape, one process;
#   5. batch 8 and 32 rows of the real pair (AR, prompt lookup, draft model);
#   6. with the Pallas projections faster: their float32 exactness at highest precision on
#      the real pair.
set -u
set -a
W=${1:?work folder}
# The run's folders and defaults (SPECJAX_CACHE, DEADLINE, PROMPT_DIR, PY), log, left, stage,
# wait_for_files:
# shellcheck source=experiments/h200/stages.sh
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"
# Attention on the jnp path, as when this script's figures were measured (a GPU's default,
# SPECJAX_ATTENTION=auto, is now the fused kernel).
SPECJAX_ATTENTION=${SPECJAX_ATTENTION:-jnp}
STAGE_MARGIN=15
OLD=${OLD:-}
QWEN=$SPECJAX_CACHE/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
DRAFT=$SPECJAX_CACHE/models/qwen2.5-coder-0.5b-instruct.gguf
PAIR_ACCEPT=$PWD/docs/benchmarks/qwen_pair_gamma4/generations.jsonl
TUNING=$W/out/projection/projection_kernel.json
PROFILE="--context=512 --new_tokens=128 --repeats=3 --gamma=4 --out=$W/out/profile"
SETS="--sets=mt_bench,humaneval,gsm8k --prompt_dir=$PROMPT_DIR"

profile() { $PY -m experiments.profile $PROFILE "$@"; }
# The Pallas projections with the tuning table of stage 1 (built-in blocks without one).
fused() {
  if [ -f "$TUNING" ]; then SPECJAX_PROJECTION_TUNING=$TUNING SPECJAX_PROJECTION=pallas "$@"
  else SPECJAX_PROJECTION=pallas "$@"; fi
}
ms_per_token() {  # ms_per_token LABEL SHAPE SECTION: from a profile JSON, or 1e9 (also where
  # the profile has none: its loop was not above the timing noise)
  $PY -c "import json,sys; v=json.load(open(sys.argv[1]))['sections'][sys.argv[2]]['ms_per_token']; print(1e9 if v is None else v)" \
    "$W/out/profile/profile_$1_$2.json" "$3" 2>/dev/null || echo 1e9
}
export -f profile fused
log "start: $(left) s to the deadline"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv > "$W/out/gpu.txt" 2>&1

stage projection-kernel 200 timeout 240 env PYTHONPATH="$PWD:${PYTHONPATH:-}" $PY \
  experiments/h200/projection_kernel.py --out="$W/out/projection" --budget_s=150
stage p15-pad 240 profile --shape=qwen2.5-1.5b --what=step,ar,spec --label=pad \
  --accept_from="$PAIR_ACCEPT"
# (hard limits on the Pallas stages: a Triton compile that hangs must not eat the run)
stage p15-pallas 240 fused timeout 300 $PY -m experiments.profile $PROFILE \
  --shape=qwen2.5-1.5b --what=step,ar,spec --label=pallas_proj --accept_from="$PAIR_ACCEPT"
[ -n "$OLD" ] && (cd "$OLD" && stage p15-old 150 profile --shape=qwen2.5-1.5b \
  --what=ar,spec --label=old_loops --accept_from="$PAIR_ACCEPT")
stage p135-pad 100 profile --shape=smollm2-135m --what=step,ar --label=pad
stage p135-pallas 100 fused timeout 150 $PY -m experiments.profile $PROFILE \
  --shape=smollm2-135m --what=step,ar --label=pallas_proj
PAIR="--target=$QWEN --draft=$DRAFT --prompt_dir=$PROMPT_DIR --per_set=4 --out=$W/out/real_pair"
wait_for_files "$QWEN" "$DRAFT" &&
  stage real-pair 330 $PY -m experiments.real_pair $PAIR --gammas=1,2,4 --ngram_gammas=4 \
    --repeats=2
WINS=$($PY -c "import sys; print(int(float(sys.argv[1]) < float(sys.argv[2])))" \
  "$(ms_per_token pallas_proj qwen2.5-1.5b ar)" "$(ms_per_token pad qwen2.5-1.5b ar)")
log "pallas projections faster at 1.5B AR: $WINS"
if [ "$WINS" = 1 ]; then
  stage real-pair-pallas 200 fused $PY -m experiments.real_pair $PAIR --gammas=1,2 \
    --ngram_gammas=4 --repeats=2 --tag=_pallas_proj
fi
stage hf-1.5b 150 $PY -m experiments.profile --shape=qwen2.5-1.5b --what=ar --hf \
  --label=specjax_hf --out="$W/out/profile" --context=512 --new_tokens=128 --repeats=3 --notrace
stage qwen-batched 200 $PY -m experiments.bench --suites=real --gguf="$QWEN" $SETS \
  --prompts_per_set=4 --max_new_tokens=128 --repeats=1 --prompt_bucket=512 --batches=8,32 \
  --temperatures=0 --out="$W/out" --tag=_qwen_batched --weights_cache \
  --drafter="ngram:gamma=4,name=prompt-lookup" --drafter="model:model=$DRAFT,gamma=2,name=draft-model"
[ "$WINS" = 1 ] && stage pallas-f32 150 fused env JAX_DEFAULT_MATMUL_PRECISION=highest $PY -m \
  experiments.real_pair $PAIR --per_set=2 --dtype=float32 --gammas=2,4 --ngram_gammas=4 \
  --repeats=1 --tag=_pallas_proj_float32
reports=$(ls "$W"/out/profile/*.json 2>/dev/null | paste -sd, -)
[ -n "$reports" ] && $PY -m experiments.profile --report="$reports" > "$W/out/profile_table.md" 2>&1
cd "$W" && tar czf "$W/results.tgz" --exclude='hlo' out logs status
log "done: $(ls -la "$W/results.tgz")"
