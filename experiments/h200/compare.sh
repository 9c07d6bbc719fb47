#!/usr/bin/env bash
# One timed comparison of chosen drafters on a real target, as the twentieth session ran its
# before/after (docs/benchmarks.md): MT-Bench / HumanEval / GSM8K, 4 prompts each, 128 new
# tokens, bucket 512, greedy, batch 1, AR in the same process.
#
#   bash experiments/h200/compare.sh OUT TARGET TAG ROW...
#
# TARGET: smollm2 (the HASS head hass-smollm2-135m-instruct) or qwen (the head
# eagle-qwen2.5-coder-1.5b-instruct), both from $SPECJAX_CACHE (models/, drafters/); ROW:
# prompt-lookup, eagle-dv32k (the chain), eagle-dynamic12-dv32k (the 12-node tree),
# eagle-dynamic12-dv32k-lookupL (the tree with an L-token prompt-lookup branch). Writes
# OUT/bench_real<TAG>.json and its plot. A dry run on any machine with the SmolLM2 GGUF and
# head in $SPECJAX_CACHE: PY=python PROMPTS=1 NEW_TOKENS=8 REPEATS=1 (~80 s on 2 CPU cores).
# Environment: PROMPT_DIR (default .carry/prompts), REPEATS (timed runs per set, median;
# default 3), PROMPTS and NEW_TOKENS (per set, default 4 and 128; smaller for a dry run),
# F32=1 (float32 at `highest` precision, untimed: exactness against AR),
# TREE (default dynamic:depth=4,top_k=4,nodes=12), PY (default python3; PY=echo prints the
# command), and OLD=<folder of an older tree>: run that tree's bench from there (a
# before/after in one lease; `python -m` puts the current folder first on the path).
set -eu
OUT=${1:?output folder}; TARGET=${2:?smollm2 or qwen}; TAG=${3:?tag, e.g. _smollm2}
shift 3
PY=${PY:-python3}
TREE=${TREE:-dynamic:depth=4,top_k=4,nodes=12}
PROMPT_DIR=${PROMPT_DIR:-$PWD/.carry/prompts}
CACHE=${SPECJAX_CACHE:-$HOME/.cache/specjax}
case $TARGET in
  smollm2) GGUF=SmolLM2-135M-Instruct.Q4_1.gguf; HEAD=hass-smollm2-135m-instruct ;;
  qwen) GGUF=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf; HEAD=eagle-qwen2.5-coder-1.5b-instruct ;;
  *) echo "unknown target $TARGET (smollm2 or qwen)" >&2; exit 2 ;;
esac
flags=()
for row in "$@"; do
  case $row in
    prompt-lookup) flags+=("--drafter=ngram:gamma=4,name=prompt-lookup") ;;
    eagle-dv32k) flags+=("--drafter=eagle:heads=$HEAD,gamma=4,draft_vocab=32768,name=$row") ;;
    eagle-dynamic12-dv32k) flags+=("--drafter=eagle:heads=$HEAD,tree=$TREE,draft_vocab=32768,name=$row") ;;
    eagle-dynamic12-dv32k-lookup[0-9]*)
      flags+=("--drafter=eagle:heads=$HEAD,tree=$TREE,lookup=${row##*lookup},draft_vocab=32768,name=$row") ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
done
timing=(--repeats="${REPEATS:-3}")
precision=()
if [ "${F32:-0}" = 1 ]; then
  timing=(--repeats=0 --dtype=float32)
  precision=(env JAX_DEFAULT_MATMUL_PRECISION=highest)
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ -n "${OLD:-}" ] && cd "$OLD"
"${precision[@]}" $PY -m experiments.bench --suites=real --gguf="$CACHE/models/$GGUF" \
  --sets=mt_bench,humaneval,gsm8k --prompt_dir="$PROMPT_DIR" --prompts_per_set="${PROMPTS:-4}" \
  --max_new_tokens="${NEW_TOKENS:-128}" --prompt_bucket=512 --batches=1 --temperatures=0 --weights_cache \
  "${timing[@]}" --out="$OUT" --tag="$TAG" "${flags[@]}"
