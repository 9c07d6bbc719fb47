#!/usr/bin/env bash
# One lease that trains Qwen2.5-Coder-1.5B's EAGLE-3-input head from scratch and measures the
# #13 goals' rows with it (the twenty-second session's plan: every trained head went with the
# replaced project machine). In the lease's first call, after prepare_lease.py:
#
#   LEASE_LEFT=1800 bash experiments/h200/start.sh bash experiments/h200/retrain_qwen.sh ~/w
#
# then the part calls of .xfer/plan.txt and `poll.sh` calls. The stages:
#   1. while the weights travel (no files needed): the decode loop's unmeasured switches at
#      the Qwen shape on synthetic weights, `loop_variants.sh` (LOOP_VARIANTS, default
#      "default both_new"; empty skips them), into <work>/out/lv;
#   2. heads.sh with TARGETS=qwen: ~4 min of data (45k ShareGPT turns, the target's answers),
#      EAGLE-3 inputs, unroll 2, the 32k draft vocabulary, STEPS steps (default 9,500, ~10
#      min at 63 ms; BUDGET minutes at most, default 10); then prompt lookup, the gamma = 4
#      chain, the 12-node tree and the tree + lookup 8, timed (three runs a set), and the chain
#      and tree in float32 against AR; the head packed in <work>/pack_qwen_eagle.
# The device tool takes commands of at most 2,000 characters: these settings live here.
# Every variable below can be overridden from the environment. DEADLINE (epoch seconds) is
# when heads.sh must be done: LEASE_LEFT (the `status` tool's budget_left_s just before the
# first call; default 1800) less ~100 s the machine's start takes from it and RESERVE (default
# 150 s: the last poll and the emit calls). The twenty-third session's first call came after a
# failed start had cost 91 s: its deadline, from a full 1,800, left no time for the emit calls.
set -u
W=${1:?work folder}
HERE=$(dirname "${BASH_SOURCE[0]}")
export DEADLINE=${DEADLINE:-$(($(date +%s) + ${LEASE_LEFT:-1800} - 100 - ${RESERVE:-150}))}
LOOP_VARIANTS=${LOOP_VARIANTS-default both_new}
if [ -n "$LOOP_VARIANTS" ]; then
  mkdir -p "$W/logs"
  # shellcheck disable=SC2086
  bash "$HERE/loop_variants.sh" "$W/out/lv" $LOOP_VARIANTS > "$W/logs/loop_variants.log" 2>&1
fi
export TARGETS=qwen
export QWEN_DATA_OVERRIDES=${QWEN_DATA_OVERRIDES:-data.source=sharegpt_turns,data.num_prompts=45056,data.path=runs/data/q45k.npz,data.features=online}
export TRAIN_EAGLE=${TRAIN_EAGLE:-head.feature_layers=eagle3,head.train_vocab=32768,head.unroll_steps=2,train.num_steps=${STEPS:-9500}}
export BUDGET_EAGLE=${BUDGET:-10}
export SKIP=${SKIP:-qwen-hass qwen-medusa qwen-pair-f32 qwen-compare-xla-topk qwen-compare-xla-move qwen-batched qwen-calls qwen-trace qwen-pair qwen-compare-T1 hf-llama3-8b hf-qwen2.5-1.5b top-k-bench cache-move-check tree-profile-xla-xla tree-profile-split-xla tree-profile-split-pallas}
export DROP_DRAFTERS=${DROP_DRAFTERS:-medusa eagle-hass early-exit draft-model eagle eagle-dynamic-tree eagle-tree eagle-dynamic-dv32k eagle-dynamic16-dv32k eagle-dynamic12-dv32k-int8-lm-head eagle-dynamic12-dv32k-int8 eagle-dynamic20-dv32k eagle-dynamic12-dv16k eagle-dynamic12-dv32k-lookup4 eagle-dynamic12-dv32k-lookup16}
export EXACT_ROWS=${EXACT_ROWS:-eagle-dv32k eagle-dynamic12-dv32k}
exec bash "$HERE/heads.sh" "$W"
