#!/usr/bin/env bash
# Decode speed after the single-row padding (`layers.project`) and the EAGLE decode layout
# (`EagleDrafter.decode_params`), on one lent H200, in one pass. Run from the repository root
# in the background (setsid); later device calls bring the GGUFs (DEVELOPERS.md):
#
#   SPECJAX_CACHE=~/sc DEADLINE=$(( $(date +%s) + 1500 )) OLD=~/old setsid nohup \
#       bash experiments/h200/decode_speed.sh ~/w > ~/w/run.log 2>&1 &
#
# The lent machine goes back after 30 s without a call, taking the weights and this run
# with it: queue the part calls and then polling calls (`sleep N; cat <work>/status`, up to
# 600 s each) back to back, and edit nothing between them (2026-11-30: one machine lost so).
# SKIP="name ..." leaves stages out (experiments/h200/stages.sh).
# Stages, most wanted first, each alone on the GPU (a stage that would start after DEADLINE
# is skipped; each logs to <work>/logs/<stage>.log and appends a line to <work>/status):
#   1. profile (synthetic weights, `experiments.profile`): Qwen2.5-1.5B shape with the
#      single-row padding ("pad") and without it ("plain"), step + AR + spec with a
#      0.5B-shaped draft replaying the real pair's acceptance;
#   2. the real Qwen2.5-Coder pair (`experiments.real_pair`), bf16, gamma 1-4 and prompt lookup;
#   3. Llama-3-8B shape + an EAGLE head of its width, acceptance replayed from the EAGLE head
#      trained for Qwen2.5-Coder-1.5B (a projection);
#   4. SmolLM2-135M with its trained heads, every drafter, greedy bf16 (`experiments.bench`);
#   5. float32 exactness at highest precision of the real Qwen pair;
#   6. the 8B + EAGLE projection with a reduced draft vocabulary; the Pallas attention kernel
#      (checked, then profiled at 1.5B); SmolLM2's AR padded vs plain; SmolLM2's drafters in
#      float32; the 1.5B shape with an EAGLE head; the loops before the last session's loop
#      changes ($OLD: `git archive 28fc766 specjax experiments`); HF transformers at 1.5B.
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
SMOL=$SPECJAX_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
QWEN=$SPECJAX_CACHE/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
DRAFT=$SPECJAX_CACHE/models/qwen2.5-coder-0.5b-instruct.gguf
PAIR_ACCEPT=$PWD/docs/benchmarks/qwen_pair_gamma4/generations.jsonl
EAGLE_ACCEPT=$PWD/docs/benchmarks/h200_drafters/eagle_qwen_gamma4_acceptance.json
PROFILE="--context=512 --new_tokens=128 --repeats=3 --gamma=4 --out=$W/out/profile"
SETS="--sets=mt_bench,humaneval,gsm8k --prompt_dir=$PROMPT_DIR"

profile() { $PY -m experiments.profile $PROFILE "$@"; }
plain() { SPECJAX_SINGLE_ROW_DOTS=plain "$@"; }
smol_drafters() {
  local h=smollm2-135m-instruct
  echo "--drafter=ngram:gamma=4,name=prompt-lookup --drafter=eagle:heads=eagle-$h,gamma=4"
  echo "--drafter=eagle:heads=eagle-$h,tree=4,2,1,1,name=eagle-tree"
  echo "--drafter=eagle:heads=eagle-$h,gamma=4,draft_vocab=8192,name=eagle-dv8k"
  echo "--drafter=medusa:heads=medusa-$h,gamma=4"
  echo "--drafter=eagle:heads=hass-$h,gamma=4,name=eagle-hass"
  echo "--drafter=eagle:heads=eagle-$h,tree=dynamic:depth=6,top_k=6,nodes=32,name=eagle-dyn"
}
export -f profile plain smol_drafters
log "start: $(left) s to the deadline"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv > "$W/out/gpu.txt" 2>&1

stage p15-pad 300 profile --shape=qwen2.5-1.5b --what=step,ar,spec --label=pad \
  --accept_from="$PAIR_ACCEPT"
stage p15-plain 300 plain profile --shape=qwen2.5-1.5b --what=step,ar,spec --label=plain \
  --accept_from="$PAIR_ACCEPT"
wait_for_files "$QWEN" "$DRAFT" &&
  stage real-pair 300 $PY -m experiments.real_pair --target="$QWEN" --draft="$DRAFT" \
    --prompt_dir="$PROMPT_DIR" --per_set=4 --gammas=1,2,3,4 --ngram_gammas=4 --repeats=2 \
    --out="$W/out/real_pair"
stage p8b-eagle 240 profile --shape=llama3-8b --draft_shape=eagle --what=ar,spec \
  --label=eagle --accept_from="$EAGLE_ACCEPT"
# shellcheck disable=SC2046
wait_for_files "$SMOL" && stage smollm2-compare 240 $PY -m experiments.bench --suites=real \
  --gguf="$SMOL" $SETS --prompts_per_set=4 --max_new_tokens=128 --repeats=1 \
  --prompt_bucket=512 --batches=1 --temperatures=0 --out="$W/out" --tag=_smollm2 \
  --weights_cache $(smol_drafters)
stage qwen-f32 150 env JAX_DEFAULT_MATMUL_PRECISION=highest $PY -m experiments.real_pair \
  --target="$QWEN" --draft="$DRAFT" --prompt_dir="$PROMPT_DIR" --per_set=2 --dtype=float32 \
  --gammas=2,4 --ngram_gammas=4 --repeats=1 --tag=_float32 --out="$W/out/real_pair"
stage p8b-eagle-dv 200 profile --shape=llama3-8b --draft_shape=eagle --draft_vocab=32768 \
  --what=ar,spec --label=eagle_dv32k --accept_from="$EAGLE_ACCEPT"
KERNEL=0  # the Pallas decode attention: correct and compiled on this GPU? (a hard limit: a
# Triton compile that hangs must not eat the run)
stage attention-kernel 150 timeout 120 env PYTHONPATH="$PWD:${PYTHONPATH:-}" $PY \
  experiments/h200/attention_kernel.py && KERNEL=1
[ "$KERNEL" = 1 ] && stage p15-pallas 200 timeout 180 env SPECJAX_ATTENTION=pallas $PY -m \
  experiments.profile $PROFILE --shape=qwen2.5-1.5b --what=step,ar --label=pad_pallas
stage p135-pad 120 profile --shape=smollm2-135m --what=step,ar --label=pad
stage p135-plain 120 plain profile --shape=smollm2-135m --what=step,ar --label=plain
# shellcheck disable=SC2046
stage smollm2-f32 150 env JAX_DEFAULT_MATMUL_PRECISION=highest $PY -m experiments.bench \
  --suites=real --gguf="$SMOL" $SETS --prompts_per_set=2 --max_new_tokens=128 --repeats=0 \
  --prompt_bucket=512 --batches=1 --temperatures=0 --dtype=float32 --out="$W/out" \
  --tag=_smollm2_f32 $(smol_drafters | head -n 5)
stage p15-eagle-dv 150 profile --shape=qwen2.5-1.5b --draft_shape=eagle --draft_vocab=32768 \
  --what=ar,spec --label=eagle_dv32k --accept_from="$EAGLE_ACCEPT"
[ -n "$OLD" ] && (cd "$OLD" && stage p15-old 120 plain profile --shape=qwen2.5-1.5b \
  --what=ar,spec --label=old_loops --accept_from="$PAIR_ACCEPT")
stage hf-1.5b 150 $PY -m experiments.profile --shape=qwen2.5-1.5b --what=ar --hf \
  --label=specjax_hf --out="$W/out/profile" --context=512 --new_tokens=128 --repeats=3 --notrace
reports=$(ls "$W"/out/profile/*.json 2>/dev/null | paste -sd, -)
[ -n "$reports" ] && $PY -m experiments.profile --report="$reports" > "$W/out/profile_table.md" 2>&1
cd "$W" && tar czf "$W/results.tgz" --exclude='hlo' out logs status
log "done: $(ls -la "$W/results.tgz")"
