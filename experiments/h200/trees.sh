#!/usr/bin/env bash
# Trees at their cost (2026-12-01, twelfth session): where a speculative call's time goes
# (chain and trees, synthetic weights, before / after the draft-column expansion), then the
# trained Qwen EAGLE head's chain and trees over its 32k draft vocabulary on real weights,
# bf16 timed and float32 exact.
#   DEADLINE=<epoch s> [BEFORE=<folder with the old specjax/ and experiments/>] \
#     bash experiments/h200/trees.sh W
# Needs, brought by later device calls: $SPECJAX_CACHE/models/$QWEN_FILE and the head's folder
# $HEAD (default $W/runs/prev_eagle/drafter). Results: $W/out, stage log $W/status.
set -u
set -a
W=${1:?work folder}
# shellcheck source=experiments/h200/stages.sh
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"
QWEN_FILE=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
HEAD=${HEAD:-$W/runs/prev_eagle/drafter}
BEFORE=${BEFORE:-}
REPO=$PWD
SETS="--sets=mt_bench,humaneval,gsm8k --prompt_dir=$PROMPT_DIR"
COMPARE="--prompts_per_set=4 --max_new_tokens=128 --repeats=1 --prompt_bucket=512"
CALL_DRAFTS="--drafts=chain --drafts=4,2,1,1 --drafts=dynamic:depth=5,top_k=4,nodes=16"
CALL_DRAFTS="$CALL_DRAFTS --drafts=dynamic:depth=6,top_k=6,nodes=32"

calls() {  # calls LABEL FOLDER: the call split, with the specjax of FOLDER
  cd "$2" && $PY -m experiments.call_cost --shape=qwen2.5-1.5b --draft_vocab=32768 \
    $CALL_DRAFTS --label="$1" --out="$W/out/calls" --repeats=5
}

tree_rows() {  # the --drafter flags of the comparison, most wanted first
  local e="eagle:heads=$HEAD" v="draft_vocab=32768"
  echo "--drafter=ngram:gamma=4,name=prompt-lookup"
  echo "--drafter=$e,gamma=4,$v,name=eagle-dv32k"
  echo "--drafter=$e,tree=4,2,1,1,$v,name=eagle-tree-dv32k"
  echo "--drafter=$e,tree=dynamic:depth=5,top_k=4,nodes=16,$v,name=eagle-dynamic16-dv32k"
  echo "--drafter=$e,tree=2,2,1,1,$v,name=eagle-tree2211-dv32k"
  echo "--drafter=$e,tree=dynamic:depth=4,top_k=4,nodes=12,$v,name=eagle-dynamic12-dv32k"
  echo "--drafter=$e,tree=dynamic:depth=6,top_k=4,nodes=20,$v,name=eagle-dynamic20-dv32k"
  echo "--drafter=$e,tree=dynamic:depth=6,top_k=6,nodes=32,$v,name=eagle-dynamic-dv32k"
}

compare() {
  # shellcheck disable=SC2046
  $PY -m experiments.bench --suites=real --gguf="$SPECJAX_CACHE/models/$QWEN_FILE" $SETS \
    $COMPARE --batches=1 --temperatures=0 --out="$W/out" --tag=trees --weights_cache \
    $(tree_rows)
}

exactness() {  # float32 at highest precision, greedy, MT-Bench: AR and the tree rows
  # shellcheck disable=SC2046
  JAX_DEFAULT_MATMUL_PRECISION=highest $PY -m experiments.bench --suites=real \
    --gguf="$SPECJAX_CACHE/models/$QWEN_FILE" --sets=mt_bench --prompt_dir="$PROMPT_DIR" \
    $COMPARE --repeats=0 --batches=1 --temperatures=0 --dtype=float32 --out="$W/out" \
    --tag=trees_f32 $(tree_rows | grep -E "name=(eagle-tree-dv32k|eagle-dynamic16-dv32k)")
}

export -f calls tree_rows compare exactness
log "start: $(left) s to the deadline"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv > "$W/out/gpu.txt" 2>&1
[ -n "$BEFORE" ] && stage calls-before 200 calls before "$BEFORE"
stage calls-after 200 calls after "$REPO"
wait_for_files "$SPECJAX_CACHE/models/$QWEN_FILE" "$HEAD/heads.json" &&
  stage trees-compare 150 compare
stage trees-exact-f32 90 exactness
log "done"
