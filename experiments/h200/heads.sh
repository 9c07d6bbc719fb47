#!/usr/bin/env bash
# Draft heads trained and every drafter compared on one lent H200, in one pass (issue
# "Drafters that earn their keep"). Run from the repository root, in the background (setsid):
# the stages wait for the weights that later device calls bring.
#
#   SPECJAX_CACHE=~/sc DEADLINE=$(( $(date +%s) + 1500 )) setsid nohup \
#       bash experiments/h200/heads.sh ~/w > ~/w/heads.log 2>&1 &
#
# Before it (and while it runs), the files travel as in DEVELOPERS.md: the GGUFs in <= 50 MB
# parts appended to one file each, checked and moved into $SPECJAX_CACHE/models/ under their
# registry names (smollm2-135m-instruct first: its training starts at once; then the Qwen
# 1.5B target, whose training waits for its file; the Qwen 0.5B draft by the comparison).
# The tokenized ShareGPT prompts travel as runs/data/*.prompts.json (made on any machine with
# `experiments/train_draft.py --prompts_only`, see configs/train_heads_h200.py), the
# evaluation prompts as a folder $PROMPT_DIR (question.jsonl, HumanEval.jsonl.gz, test.jsonl).
#
# The lent machine goes back after 30 s without a call: queue the start call, the part calls
# and polling calls back to back. Each polling call sleeps (up to ~560 s), then tars what is
# done so far (out, logs, status, runs/*/metrics.jsonl, config.json, drafter/heads.json) into
# $OUT, so a machine lost mid-run loses only the stages in flight (seventh session: 1,573 s
# held, every result back).
#
# Stages (each logs to <work>/logs/<stage>.log and appends "<stage> ok|failed|skipped <s>" to
# <work>/status):
#   1. per target, in parallel: training data (the target's greedy answers to ShareGPT
#      prompts and its features; sizes in configs/train_heads_h200.py), EAGLE, then HASS-style fine-tuning (replayed drafting
#      steps) beside Medusa; SmolLM2's float32 exactness check runs beside the Qwen training;
#   2. alone on the GPU (timed): every drafter on MT-Bench, HumanEval and GSM8K, greedy,
#      bfloat16, batch 1, Qwen then SmolLM2; at temperature 1 the drafters whose sampling
#      rules differ (prompt lookup, EAGLE chain, EAGLE static tree); Qwen's float32 exactness;
#   3. while DEADLINE allows: the Qwen batch 8 / 32 rows, the call split of the chain and
#      the 12-node tree at the Qwen and Llama-3-8B shapes with the 8B projection
#      (`qwen-calls`), one traced call of the head
#      drafters (`qwen-trace`), the real Qwen pair's gamma sweep (`experiments.real_pair`),
#      HF transformers beside our AR loop.
# An EAGLE-3-input head on twice the prompts (planned after the thirteenth session; the
# features are computed in the training step, since stored they would not fit the disk):
#   TARGETS=qwen QWEN_DATA_OVERRIDES=data.source=sharegpt_turns,data.num_prompts=45056,\
#     data.path=runs/data/q45k.npz,data.features=online \
#   TRAIN_EAGLE=head.feature_layers=eagle3,head.train_vocab=32768,train.num_steps=<sized> ...
# PREV_HEADS=<a drafter folder brought to the lease> adds its chain and 12-node tree rows
# (prev-eagle-dv32k, prev-eagle-dynamic12-dv32k) beside this run's head, in the same process.
# DROP_DRAFTERS="medusa eagle-hass ..." leaves comparison rows out by label (see `drafters`);
# TRAIN_EAGLE / TRAIN_SHORT add config overrides to the EAGLE / HASS + Medusa runs (e.g.
# train.num_steps=9000, head.init_from=runs/prev_eagle/drafter).
# A stage that would start after DEADLINE (epoch seconds) is skipped; training stages stop
# at their --stop_after_minutes budget. SCALE=dry runs the same stages at toy sizes (CPU);
# TARGETS=smollm2 leaves the Qwen stages out, TARGETS=qwen the SmolLM2 ones. HF_FIRST=1 runs
# the HF stages first, while the GPU waits for the weights anyway; the real pair's float32
# exactness (untimed) then runs beside the Qwen EAGLE training. PROFILE_FIRST=1 does the same
# with the tree call's profiles (`profile_stages`), which otherwise run last; PROFILE_ONLY=1
# runs only them (a lease of a few minutes: no weights to bring).
set -u
set -a  # every variable below reaches the stage commands (run by `timeout bash -c`)
W=${1:?work folder}
if [ "${SCALE:-full}" = dry ] && [ -z "${SPECJAX_CACHE:-}" ]; then
  # A dry run publishes its toy heads under the real names: in the default cache they would
  # replace trained ones (it happened to the Qwen head on the project machine).
  echo "SCALE=dry needs SPECJAX_CACHE set to a scratch folder (with links to the GGUFs)" >&2
  exit 2
fi
# The run's folders and defaults (SPECJAX_CACHE, DEADLINE, PROMPT_DIR, PY), log, left, listed,
# stage, wait_for_files:
# shellcheck source=experiments/h200/stages.sh
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"
mkdir -p "$W/runs/data"
SCALE=${SCALE:-full}
TARGETS=${TARGETS:-all}  # all | smollm2 (the Qwen stages off) | qwen (the SmolLM2 ones off)
HF_FIRST=${HF_FIRST:-0}
S() { [ "$TARGETS" != qwen ]; }
Q() { [ "$TARGETS" != smollm2 ]; }
# GPU memory per training process: three share the GPU when both targets train; one target
# alone gives its EAGLE run (data on the device, [16, 384, V] float32 logits) more.
if [ "$TARGETS" = all ]; then MEM_EAGLE=0.3; MEM_SHORT=0.3; else MEM_EAGLE=0.55; MEM_SHORT=0.42; fi
REPO=$PWD
# Scripts run by path (experiments/h200/*.py) import specjax from this checkout.
PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$REPO
SMOL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
QWEN_FILE=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
DRAFT_FILE=qwen2.5-coder-0.5b-instruct.gguf
# Training runs and data live in $W/runs (configs name runs/...): link it into the repo. A
# link elsewhere is replaced (a dry run's link, carried to the GPU machine, once broke a
# lease's training); a real folder is moved aside on the GPU machine, never deleted, and a
# dry run refuses to start beside one (the project machine keeps its heads there: a
# sixteenth-session dry run deleted them).
if [ -L runs ]; then
  [ "$(readlink runs)" = "$W/runs" ] || { rm runs; ln -s "$W/runs" runs; }
elif [ -e runs ] && [ "$SCALE" = dry ]; then
  echo "heads.sh links runs/ to $W/runs, and ./runs is a real folder here: run dry passes" \
    "from a clone (git clone -q . /tmp/clone && cd /tmp/clone)" >&2
  exit 2
elif [ -e runs ]; then
  cp -rn runs/data/. "$W/runs/data/" 2>/dev/null
  aside="runs.before_heads_$(date +%s)"
  mv runs "$aside" && echo "heads.sh: moved the existing runs/ to $aside" >&2
  ln -s "$W/runs" runs
else
  ln -s "$W/runs" runs
fi
cp -n .carry/prompt_ids/*.prompts.json "$W/runs/data/" 2>/dev/null  # tokenized ahead

if [ "$SCALE" = dry ]; then  # toy sizes: the same commands end to end on a CPU
  DATA="data.num_prompts=24,data.num_eval=8,data.max_new_tokens=8,data.batch_size=8"
  TRAIN="train.batch_size=4,train.eval_batch_size=4,train.log_every=2,train.checkpoint_every=2"
  # toy sizes, then the caller's TRAIN_EAGLE / TRAIN_SHORT (e.g. head.train_vocab=...)
  TRAIN_EAGLE="$DATA,$TRAIN,train.num_steps=4${TRAIN_EAGLE:+,$TRAIN_EAGLE}"
  TRAIN_SHORT="$DATA,$TRAIN,train.num_steps=2${TRAIN_SHORT:+,$TRAIN_SHORT}"
  BUDGET_EAGLE=1; BUDGET_SHORT=1
  COMPARE="--prompts_per_set=1 --max_new_tokens=8 --repeats=1 --prompt_bucket=128"
  TREE_STATIC="2,1"; TREE_DYNAMIC="dynamic:depth=2,top_k=2,nodes=4"; GAMMA=2
  TREE_DYNAMIC16="dynamic:depth=2,top_k=2,nodes=3"; TREE_DYNAMIC12="dynamic:depth=2,top_k=2,nodes=2"
  TREE_DYNAMIC20="dynamic:depth=3,top_k=2,nodes=5"
  CALL_SHAPES="tiny"; CALL_VOCAB=0; CALL_FLAGS="--dtype=float32 --context=16 --calls=2 --repeats=1"
  BATCHES="2"; HF_SHAPES=""; PAIR_GAMMAS=1; PAIR="--per_set=1 --max_new_tokens=8 --repeats=1"
  PROFILE_FLAGS="--shape=tiny --dtype=float32 --context=16 --new_tokens=8 --calls=2 --repeats=1"
  TOPK_FLAGS="--iterations=2 --repeats=1"; MOVE_FLAGS="--iterations=1 --repeats=1 --slots=256 --shapes=smollm2-135m --batches=2"
else
  TRAIN_EAGLE=${TRAIN_EAGLE:-}; TRAIN_SHORT=${TRAIN_SHORT:-}  # overrides, e.g. train.num_steps=9000
  BUDGET_EAGLE=${BUDGET_EAGLE:-5}; BUDGET_SHORT=${BUDGET_SHORT:-2}
  # Three timed runs per set (their median): one run per set let a set's AR figure move 8-14%
  # between two processes of the same lease (twentieth session); compile dominates a row's
  # time anyway (~30 s against ~1.5 s per timed pass over a set).
  COMPARE="--prompts_per_set=4 --max_new_tokens=128 --repeats=${REPEATS:-3} --prompt_bucket=512"
  TREE_STATIC="4,2,1,1"; TREE_DYNAMIC="dynamic:depth=6,top_k=6,nodes=32"; GAMMA=4
  TREE_DYNAMIC16="dynamic:depth=5,top_k=4,nodes=16"; TREE_DYNAMIC12="dynamic:depth=4,top_k=4,nodes=12"
  TREE_DYNAMIC20="dynamic:depth=5,top_k=4,nodes=20"
  CALL_SHAPES="qwen2.5-1.5b llama3-8b"; CALL_VOCAB=32768; CALL_FLAGS="--repeats=3 --calls=16"
  BATCHES="8,32"; HF_SHAPES=${HF_SHAPES:-llama3-8b,qwen2.5-1.5b}
  PAIR_GAMMAS=${PAIR_GAMMAS:-1,2,3,5}; PAIR="--per_set=4 --repeats=3"
  PROFILE_FLAGS="--shape=qwen2.5-1.5b --context=512 --new_tokens=128 --calls=16 --repeats=3"
  PROFILE_FLAGS="$PROFILE_FLAGS --bandwidth_GBps=4200"; TOPK_FLAGS=""; MOVE_FLAGS=""
fi
SETS="--sets=mt_bench,humaneval,gsm8k --prompt_dir=$PROMPT_DIR"

wait_for() { wait_for_files "$SPECJAX_CACHE/models/$1"; }  # a model file in the cache

# DATA_OVERRIDES: config overrides for every training run of the pass (its -eagle, -hass and
# -medusa runs share one data file), e.g. more prompts from every ShareGPT user turn:
#   DATA_OVERRIDES=data.source=sharegpt_turns,data.num_prompts=24064,data.path=runs/data/q24k.npz
# (TARGETS=qwen: the path names the file; SmolLM2 would share it otherwise).
# SMOL_DATA_OVERRIDES / QWEN_DATA_OVERRIDES: the same for one target's runs only (each with
# its own data.path when both targets train), in place of DATA_OVERRIDES.
DATA_OVERRIDES=${DATA_OVERRIDES:-}
SMOL_DATA_OVERRIDES=${SMOL_DATA_OVERRIDES:-$DATA_OVERRIDES}
QWEN_DATA_OVERRIDES=${QWEN_DATA_OVERRIDES:-$DATA_OVERRIDES}
train() {  # train MEM_FRACTION PRESET BUDGET_MINUTES [OVERRIDES] [--name=NAME]
  local mem=$1 preset=$2 budget=$3 overrides=$4 data; shift 4
  case $preset in smollm2-*) data=$SMOL_DATA_OVERRIDES ;; *) data=$QWEN_DATA_OVERRIDES ;; esac
  overrides=$overrides${data:+${overrides:+,}$data}
  XLA_PYTHON_CLIENT_MEM_FRACTION=$mem $PY -m experiments.train_draft --noprogress \
    --stop_after_minutes="$budget" \
    --config="configs/train_heads_h200.py:$preset${overrides:+,$overrides}" \
    --workdir="runs/${preset//-/_}" "$@"
}

target_heads() {  # target_heads PREFIX NAME: data + EAGLE, then HASS beside Medusa
  local p=$1 n=$2
  stage "$p-eagle" 400 train "$MEM_EAGLE" "$p-eagle" "$BUDGET_EAGLE" "$TRAIN_EAGLE" \
    --name="eagle-$n" || return
  stage "$p-hass" 240 train "$MEM_SHORT" "$p-hass" "$BUDGET_SHORT" "$TRAIN_SHORT" \
    --name="hass-$n" &
  stage "$p-medusa" 240 train "$MEM_SHORT" "$p-medusa" "$BUDGET_SHORT" "$TRAIN_SHORT" \
    --name="medusa-$n" &
  wait
}

DROP_DRAFTERS=${DROP_DRAFTERS:-}  # labels of comparison rows left out, e.g. "medusa eagle-hass"
row() {  # row LABEL SPEC: one --drafter flag, unless LABEL is dropped (or KEEP lacks it)
  listed "$1" "$DROP_DRAFTERS" && return
  listed "$1" "${KEEP:-$1}" && echo "--drafter=$2"
  return 0
}
drafters() {  # drafters NAME [DRAFT_FILE]: the --drafter flags of one target's comparison
  # Most wanted first: a stage cut by the deadline keeps the rows it finished.
  local n=$1 draft=${2:-} head
  # The EAGLE rows draft with this run's EAGLE head, or its HASS fine-tune (SMOL_ROW_HEAD=hass,
  # QWEN_ROW_HEAD=hass: e.g. an EAGLE-3-input head, which drafts past its first token only
  # after the fine-tune, eighteenth session); the row labels stay.
  case $n in smollm2*) head=${SMOL_ROW_HEAD:-eagle} ;; *) head=${QWEN_ROW_HEAD:-eagle} ;; esac
  row prompt-lookup "ngram:gamma=$GAMMA,name=prompt-lookup"
  row eagle "eagle:heads=$head-$n,gamma=$GAMMA"
  row eagle-dynamic-tree "eagle:heads=$head-$n,tree=$TREE_DYNAMIC,name=eagle-dynamic-tree"
  # EAGLE drafting over the 32k tokens most frequent in the training answers (EAGLE-3's draft
  # vocabulary, heads.with_draft_vocab): a quarter of Qwen's LM-head read per draft token.
  # Heads trained with head.train_vocab=32768 draft over it by default: the eagle row then
  # equals this one (DROP_DRAFTERS="eagle eagle-dynamic-tree" saves their compile time).
  row eagle-dv32k "eagle:heads=$head-$n,gamma=$GAMMA,draft_vocab=32768,name=eagle-dv32k"
  row eagle-dynamic-dv32k \
    "eagle:heads=$head-$n,tree=$TREE_DYNAMIC,draft_vocab=32768,name=eagle-dynamic-dv32k"
  # Half the dynamic tree (16 nodes, depth 5): fewer nodes to verify per step.
  row eagle-dynamic16-dv32k \
    "eagle:heads=$head-$n,tree=$TREE_DYNAMIC16,draft_vocab=32768,name=eagle-dynamic16-dv32k"
  # The fastest Qwen drafter of the twelfth session (1.75x): a 12-node dynamic tree over 32k.
  row eagle-dynamic12-dv32k \
    "eagle:heads=$head-$n,tree=$TREE_DYNAMIC12,draft_vocab=32768,name=eagle-dynamic12-dv32k"
  # The same tree with a prompt-lookup branch of 4 or 8 copied tokens grafted on
  # (`tree.LookupTreeSpec`, nineteenth session): what the text already said, which the head
  # rarely drafts many tokens deep; no head call, only verified rows.
  row eagle-dynamic12-dv32k-lookup4 \
    "eagle:heads=$head-$n,tree=$TREE_DYNAMIC12,lookup=4,draft_vocab=32768,name=eagle-dynamic12-dv32k-lookup4"
  row eagle-dynamic12-dv32k-lookup8 \
    "eagle:heads=$head-$n,tree=$TREE_DYNAMIC12,lookup=8,draft_vocab=32768,name=eagle-dynamic12-dv32k-lookup8"
  # 16 copied tokens: on SmolLM2 in float32 (CPU, nineteenth session) tau 3.61 -> 3.79 over 8,
  # HumanEval 4.54 -> 5.08; its GPU cost not yet measured.
  row eagle-dynamic12-dv32k-lookup16 \
    "eagle:heads=$head-$n,tree=$TREE_DYNAMIC12,lookup=16,draft_vocab=32768,name=eagle-dynamic12-dv32k-lookup16"
  # The same with the head's LM head slice as weight-only int8 (`weights=int8_lm_head`): half
  # its 4 reads a call (~50 us at the Qwen shape), if XLA's GEMM reads int8 inside the loop
  # (eighteenth session, synthetic weights: no gain while XLA hoisted the conversion out of
  # the loop; `quantize.matmul`'s barrier since). On the CPU in float32 this kept tau (3.42,
  # as float); int8 in the head's layer too (`weights=int8`, the -int8 row) cost 4.7%.
  row eagle-dynamic12-dv32k-int8-lm-head \
    "eagle:heads=$head-$n,tree=$TREE_DYNAMIC12,draft_vocab=32768,weights=int8_lm_head,name=eagle-dynamic12-dv32k-int8-lm-head"
  row eagle-dynamic12-dv32k-int8 \
    "eagle:heads=$head-$n,tree=$TREE_DYNAMIC12,draft_vocab=32768,weights=int8,name=eagle-dynamic12-dv32k-int8"
  # Every node a 5-level, top-4 tree drafts verified (20): the attention kernel's 16-row
  # programs (seventeenth session) made wide verification cheaper, but not enough (Qwen,
  # eighteenth session: 2.10x at tau 3.73 against the 12-node tree's 2.19x at 3.43).
  row eagle-dynamic20-dv32k \
    "eagle:heads=$head-$n,tree=$TREE_DYNAMIC20,draft_vocab=32768,name=eagle-dynamic20-dv32k"
  # The same tree over the 16k most frequent tokens: half the LM-head read per head step.
  row eagle-dynamic12-dv16k \
    "eagle:heads=$head-$n,tree=$TREE_DYNAMIC12,draft_vocab=16384,name=eagle-dynamic12-dv16k"
  # A head brought to the lease (PREV_HEADS=<its drafter folder>, e.g. the thirteenth
  # session's), compared beside this run's in the same process: a training change's
  # before / after.
  if [ -n "${PREV_HEADS:-}" ]; then
    row prev-eagle-dv32k \
      "eagle:heads=$PREV_HEADS,gamma=$GAMMA,draft_vocab=32768,name=prev-eagle-dv32k"
    row prev-eagle-dynamic12-dv32k \
      "eagle:heads=$PREV_HEADS,tree=$TREE_DYNAMIC12,draft_vocab=32768,name=prev-eagle-dynamic12-dv32k"
  fi
  row eagle-tree "eagle:heads=$head-$n,tree=$TREE_STATIC,name=eagle-tree"
  row medusa "medusa:heads=medusa-$n,gamma=$GAMMA"
  [ -n "$draft" ] &&
    row draft-model "model:model=$SPECJAX_CACHE/models/$draft,gamma=2,name=draft-model"
  row eagle-hass "eagle:heads=hass-$n,gamma=$GAMMA,name=eagle-hass"
  row early-exit "early-exit:gamma=$GAMMA"
}

compare() {  # compare MODEL_FILE NAME TAG DRAFT_FILE TEMPERATURES [few]: timed, bfloat16
  local file=$1 n=$2 tag=$3 draft=$4 temps=$5 which=${6:-all} flags
  # At T = 1 only the drafters the sampling rules differ for: one-hot q (prompt lookup),
  # a head's q (EAGLE chain), the multi-draft tree rule (EAGLE static tree).
  if [ "$which" = few ]; then
    flags=$(KEEP="prompt-lookup eagle eagle-tree" drafters "$n" "$draft")
  else
    flags=$(drafters "$n" "$draft")
  fi
  # shellcheck disable=SC2086
  $PY -m experiments.bench --suites=real --gguf="$SPECJAX_CACHE/models/$file" $SETS $COMPARE \
    --batches=1 --temperatures="$temps" --out="$W/out" --tag="$tag" --weights_cache $flags
}

# EXACT_ROWS="eagle-dv32k ...": the rows the float32 stage checks (default: every compared
# row), e.g. a new head's rows only, where the others' exactness was taken by an earlier lease.
# EXACT_ENV="SPECJAX_CACHE_MOVE=xla ...": settings of that stage's process (e.g. a path other
# than the default whose exactness on the real model is to be checked).
# SMOL_EXACT_ROWS / QWEN_EXACT_ROWS: the same for one target only, in place of EXACT_ROWS.
exactness() {  # exactness MODEL_FILE NAME TAG [DRAFT_FILE]: float32, highest precision, greedy
  local file=$1 n=$2 tag=$3 draft=${4:-} rows
  case $n in smollm2*) rows=${SMOL_EXACT_ROWS:-${EXACT_ROWS:-}} ;; *) rows=${QWEN_EXACT_ROWS:-${EXACT_ROWS:-}} ;; esac
  # shellcheck disable=SC2046
  # shellcheck disable=SC2086
  env ${EXACT_ENV:-} JAX_DEFAULT_MATMUL_PRECISION=highest $PY -m experiments.bench --suites=real \
    --gguf="$SPECJAX_CACHE/models/$file" $SETS $COMPARE --repeats=0 --batches=1 \
    --temperatures=0 --dtype=float32 --out="$W/out" --tag="$tag" \
    $(KEEP="${rows:-${KEEP:-}}" drafters "$n" "$draft")
}

export -f train compare exactness drafters row listed
log "start: $(left) s to the deadline, scale $SCALE"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv > "$W/out/gpu.txt" 2>&1
hf_stages() {  # ours then HF's, one process per shape, alone on the GPU
  for shape in ${HF_SHAPES//,/ }; do
    stage "hf-$shape" 150 $PY -m experiments.profile --shape="$shape" --what=ar --hf \
      --label=specjax --out="$W/out/profile" --context=512 --new_tokens=128 --repeats=3 --notrace
  done
}
[ "$HF_FIRST" = 1 ] && hf_stages
# Where the 12-node tree's call goes (synthetic weights at the Qwen shape, an EAGLE head over
# a 32k draft vocabulary): one traced loop per (top-k method, cache move method), its GPU time
# split into draft / verify / accept / commit (`kernels.phase_times`): the sixteenth session's
# before / after. Before them, the top-k methods alone at tree drafting's shapes and the
# one-kernel cache move against the jnp path's (bit-equal, timed). PROFILE_FIRST=1 runs these
# first, while the GPU waits for the weights anyway (they need no files).
profile_stages() {
  stage top-k-bench 60 $PY experiments/h200/top_k_bench.py --out="$W/out/top_k.json" $TOPK_FLAGS
  stage cache-move-check 60 $PY experiments/h200/cache_move_check.py \
    --out="$W/out/cache_move.json" $MOVE_FLAGS
  local variant top_k move
  for variant in xla:xla split:xla split:pallas; do
    top_k=${variant%:*}; move=${variant#*:}
    stage "tree-profile-$top_k-$move" 120 env SPECJAX_TOP_K="$top_k" SPECJAX_CACHE_MOVE="$move" \
      $PY -m experiments.profile --draft_shape=eagle --draft_vocab="$CALL_VOCAB" \
      --tree="$TREE_DYNAMIC12" --what=spec --label="topk_${top_k}_move_$move" \
      --out="$W/out/profile" $PROFILE_FLAGS
  done
}
[ "${PROFILE_FIRST:-0}" = 1 ] && profile_stages
if [ "${PROFILE_ONLY:-0}" = 1 ]; then  # a short lease: the profiles alone, no files needed
  [ "${PROFILE_FIRST:-0}" = 1 ] || profile_stages
  cd "$W" && tar czf "$W/results.tgz" --exclude=hlo out logs status && log "done: $W/results.tgz"
  exit 0
fi
PAIR_FILES="--target=$SPECJAX_CACHE/models/$QWEN_FILE --draft=$SPECJAX_CACHE/models/$DRAFT_FILE"
PAIR_FILES="$PAIR_FILES --prompt_dir=$PROMPT_DIR --out=$W/out/real_pair"
# Processes that share the GPU while training take at most 30% of its memory each (the
# training runs: MEM_EAGLE, MEM_SHORT).
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.3
wait_status() {  # a stage of an earlier instance of this script (RESUME=1) to end
  until grep -Eq "\] $1 (ok|failed|skipped)" "$W/status"; do sleep 3; done
}
if [ "${RESUME:-0}" = 1 ]; then  # training is left to the instance that started it
  S && stage smollm2-exact-f32 200 exactness "$SMOL_FILE" smollm2-135m-instruct _smollm2_f32 &
  Q && { wait_status qwen-hass; wait_status qwen-medusa; }
  wait
else
S && (
  wait_for "$SMOL_FILE" && target_heads smollm2 smollm2-135m-instruct &&
    stage smollm2-exact-f32 200 exactness "$SMOL_FILE" smollm2-135m-instruct _smollm2_f32
) &
Q && (wait_for "$QWEN_FILE" && target_heads qwen qwen2.5-coder-1.5b-instruct) &
# With Qwen alone, the real pair's float32 exactness (untimed: only its tokens count) runs
# beside the Qwen training, in the memory SmolLM2's runs would have taken.
# shellcheck disable=SC2086
[ "$TARGETS" = qwen ] && ! listed qwen-pair-f32 "${SKIP:-}" && (
  wait_for "$QWEN_FILE" && wait_for "$DRAFT_FILE" &&
    stage qwen-pair-f32 200 env JAX_DEFAULT_MATMUL_PRECISION=highest $PY -m experiments.real_pair \
      $PAIR_FILES $PAIR --per_set=2 --repeats=1 --dtype=float32 --gammas=2,4 --ngram_gammas=4 \
      --tag=_float32
) &
# EXACT_EARLY=1: Qwen's float32 exactness (untimed) runs here, beside the training stages, as
# soon as its weights are in, rather than after the timed stages (a lease that trains only
# SmolLM2 and compares a brought Qwen head: the exactness then costs no time of its own).
[ "${EXACT_EARLY:-0}" = 1 ] && Q && (
  wait_for "$QWEN_FILE" &&
    stage qwen-exact-f32 150 exactness "$QWEN_FILE" qwen2.5-coder-1.5b-instruct _qwen_f32 "$DRAFT_FILE"
) &
wait
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.75
# Timed stages alone on the GPU, most wanted first (measured 2026-11-30: Qwen greedy, 9
# configurations x 3 sets, 290 s; Qwen T = 1, 4 configurations, 130 s; the real pair, AR +
# gamma 1, 2, 4 + prompt lookup, 2 repeats, 265 s; compilation is most of it, ~15-45 s per
# configuration and temperature).
# The Qwen 0.5B draft is waited for only where a stage uses it (here the draft-model row; the
# real pair's float32 stage above): a lease that does not bring it must not wait until the
# deadline.
Q && ! listed draft-model "$DROP_DRAFTERS" && wait_for "$DRAFT_FILE"
Q && stage qwen-compare 300 compare "$QWEN_FILE" qwen2.5-coder-1.5b-instruct _qwen "$DRAFT_FILE" 0
# The head rows again in processes of their own, AR beside them in each: with tree drafting's
# top-k in one stage (SPECJAX_TOP_K=xla) and with the per-layer cache move
# (SPECJAX_CACHE_MOVE=xla), the methods before the sixteenth session; the rows above take
# "auto" (on an H200: two stages, one kernel). Each change's before / after on the real model
# (the sixteenth session ran the second as the kernel's after, SPECJAX_CACHE_MOVE=pallas,
# when "xla" was the default).
compare_variant() {  # compare_variant TAG "ROW ..." ENV...
  local tag=$1 rows=$2; shift 2
  env "$@" KEEP="$rows" bash -c 'compare "$QWEN_FILE" qwen2.5-coder-1.5b-instruct "$0" "" 0' "$tag"
}
export -f compare_variant
Q && stage qwen-compare-xla-topk 120 compare_variant _qwen_xla_topk \
  "eagle-dv32k eagle-dynamic12-dv32k" SPECJAX_TOP_K=xla
Q && stage qwen-compare-xla-move 120 compare_variant _qwen_xla_move \
  "eagle-dynamic12-dv32k eagle-dynamic-dv32k" SPECJAX_CACHE_MOVE=xla
# Batch 8 and 32: AR, the best head drafter at batch 1 (EAGLE over its 32k draft vocabulary)
# and prompt lookup (--full_grid_batches: both drafters at both batches).
# shellcheck disable=SC2046
Q && stage qwen-batched 200 $PY -m experiments.bench --suites=real \
  --gguf="$SPECJAX_CACHE/models/$QWEN_FILE" $SETS $COMPARE --batches="$BATCHES" \
  --full_grid_batches="$BATCHES" \
  --temperatures=0 --out="$W/out" --tag=_qwen_batched --weights_cache \
  $(KEEP="prompt-lookup eagle-dv32k" drafters qwen2.5-coder-1.5b-instruct)
# A call's split (drafting / verification / commit, synthetic weights) of the chain and the
# 12-node tree at the Qwen shape and the Llama-3-8B shape, each projected at the acceptance
# this run's head measured above (the #13 8B projection: ms/token = ms per call / tau).
# CALL_FEATURE_LAYERS (default: TRAIN_EAGLE's head.feature_layers, e.g. eagle3): the split's
# head reads those layers as this run's head does (the target returns them, the head fuses
# them at each call's catch-up).
CALL_FEATURE_LAYERS=${CALL_FEATURE_LAYERS-$(sed -n 's/.*head\.feature_layers=\([^,]*\).*/\1/p' <<< "${TRAIN_EAGLE:-}")}
# (SCALE=dry times the 2-layer "tiny" shape, which has no EAGLE-3 layers: its layer 0 then.)
[ "$SCALE" = dry ] && [ -n "$CALL_FEATURE_LAYERS" ] && CALL_FEATURE_LAYERS=0
qwen_calls() {
  local bench="$W/out/bench_real_qwen.json" shape
  for shape in $CALL_SHAPES; do
    $PY -m experiments.call_cost --shape="$shape" --draft_vocab="$CALL_VOCAB" \
      --feature_layers="${CALL_FEATURE_LAYERS:-}" \
      --drafts=chain --drafts="$TREE_DYNAMIC12" --gamma="$GAMMA" --label=heads \
      --tau_from="$bench#eagle-dv32k" --tau_from="$bench#eagle-dynamic12-dv32k" \
      --out="$W/out/calls" $CALL_FLAGS || return 1
  done
}
export -f qwen_calls
Q && stage qwen-calls 150 qwen_calls
# Where a head drafter's iteration goes: one traced call per row (one MT-Bench prompt), its
# device time and kernels per verification call and top kernels in the rows' "trace" (the
# traces themselves stay in $W/traces).
Q && stage qwen-trace 150 $PY -m experiments.bench --suites=real \
  --gguf="$SPECJAX_CACHE/models/$QWEN_FILE" --sets=mt_bench --prompt_dir="$PROMPT_DIR" \
  $COMPARE --prompts_per_set=1 --batches=1 --temperatures=0 --out="$W/out" --tag=_qwen_trace \
  --weights_cache --trace_dir="$W/traces" \
  $(KEEP="eagle-dv32k eagle-dynamic-dv32k eagle-dynamic16-dv32k eagle-tree" \
    drafters qwen2.5-coder-1.5b-instruct)
# shellcheck disable=SC2086
Q && stage qwen-pair 240 $PY -m experiments.real_pair $PAIR_FILES $PAIR \
  --gammas="$PAIR_GAMMAS" --ngram_gammas=4
S && stage smollm2-compare 240 compare "$SMOL_FILE" smollm2-135m-instruct _smollm2 "" 0
Q && stage qwen-compare-T1 150 compare "$QWEN_FILE" qwen2.5-coder-1.5b-instruct _qwen_T1 "" 1 few
S && stage smollm2-compare-T1 150 compare "$SMOL_FILE" smollm2-135m-instruct _smollm2_T1 "" 1 few
[ "${EXACT_EARLY:-0}" != 1 ] && Q && stage qwen-exact-f32 150 exactness "$QWEN_FILE" qwen2.5-coder-1.5b-instruct _qwen_f32 "$DRAFT_FILE"
[ "$HF_FIRST" = 1 ] || hf_stages
[ "${PROFILE_FIRST:-0}" = 1 ] || profile_stages
# What comes back in results.tgz: results, logs, metrics and each head's heads.json. The heads
# themselves are packed in parts below: a SmolLM2 EAGLE-3 head is 22 MB, over the 16 MiB a
# returned file may be (eighteenth session: the tar with it was refused), a Qwen head ~200 MB.
cd "$W" && tar czf "$W/results.tgz" --exclude='*.npz' --exclude='checkpoints' \
  out logs status runs/*/metrics.jsonl runs/*/config.json runs/*/drafter/heads.json 2>/dev/null
cd "$REPO" && log "done: $(ls -la "$W/results.tgz")"
# The heads packed in 16 MB parts, for calls to bring back four at a time (DEVELOPERS.md:
# `parts.py emit --index=I $W/pack_<run> $OUT`), so a later lease need not train them again.
for drafter in runs/*/drafter; do
  [ -d "$drafter" ] || continue
  run=$(basename "$(dirname "$drafter")")
  $PY experiments/h200/parts.py pack "$drafter" "$W/pack_$run" && log "packed $run: $W/pack_$run"
done
