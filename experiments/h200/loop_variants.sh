#!/usr/bin/env bash
# Settings of the decode loop (XLA's command-buffer / CUDA-graph flags, the attention kernel's
# launch, the EAGLE head's weights) against the 12-node tree call and the autoregressive step
# at the Qwen2.5-1.5B shape (synthetic weights): one process per setting (XLA and specjax read
# them once), the AR loop and the tree loop timed in the same process.
#
#   bash experiments/h200/loop_variants.sh OUT [VARIANT ...]
#
# Variants (default: all): default, graphs_traced (graphs kept on under the profiler, so the
# trace shows the graph replay rather than XLA's op-by-op fallback), skip_temp,
# concurrent_regions, while_unrolled, min_graph_1 (XLA flags); rows16 (the attention kernel's
# programs take at most 16 query rows: SPECJAX_ROPE_ATTENTION=block_rows=16), rows64 (64), and
# launch:KEY=V,KEY=V (any launch of the kernel, e.g. launch:block_s=128,splits=4: the same
# for the AR step and the verification, as exactness needs); draft_int8 (the tree loop three
# times in one process, the head's weights as bfloat16, as weight-only int8 and with only its
# LM head slice int8, `--draft_weights`: sections spec, spec_int8 and spec_int8_lm_head beside
# one AR loop; not in the default list); lookup:L (the tree with a prompt-lookup branch of L
# tokens, `tree=...,lookup=L`: on synthetic weights nothing is accepted, so the call's time
# beside the default's is what the branch costs; not in the default list); move_arrays (the
# cache-move kernel launched as one program per row and array,
# SPECJAX_CACHE_MOVE_PROGRAMS=array, against the default's one program per row; not in the
# default list); topk_pallas (tree drafting's top-k with stage 1 as one Pallas kernel,
# SPECJAX_TOP_K=pallas, against the default two XLA sorts; not in the default list);
# both_new (move_arrays and topk_pallas together). (No split-K variant: JAX 0.11's XLA has no
# --xla_gpu_enable_split_k_autotuning; the twenty-third session's run of one failed at once.)
# SHAPE=smollm2-135m (default qwen2.5-1.5b) picks the target shape; TRACE=1 traces every
# variant (kernels by name in its profile JSON; graphs_traced is traced either way).
# Each writes OUT/profile_<variant>_*.json and OUT/<variant>.log; `python -m experiments.profile
# --report=OUT/profile_*.json` prints them side by side.
set -u
OUT=${1:?output folder}
shift
mkdir -p "$OUT"
PY=${PY:-python}
TREE=${TREE:-dynamic:depth=4,top_k=4,nodes=12}
COMMON="--draft_shape=eagle --draft_vocab=32768 --what=ar,spec
  --shape=${SHAPE:-qwen2.5-1.5b} --context=512 --new_tokens=128 --repeats=5 --bandwidth_GBps=4200"
flags_of() {  # the variant's XLA flags
  case $1 in
    default) echo "" ;;
    graphs_traced) echo "--xla_enable_command_buffers_during_profiling=true" ;;
    skip_temp) echo "--xla_gpu_command_buffer_update_mode=SKIP_TEMP" ;;
    concurrent_regions) echo "--xla_gpu_command_buffer_scheduling_mode=CONCURRENT_REGIONS" ;;
    while_unrolled)
      echo "--xla_gpu_enable_command_buffer=+WHILE --xla_gpu_command_buffer_unroll_loops=true" ;;
    min_graph_1) echo "--xla_gpu_graph_min_graph_size=1" ;;
    rows16 | rows64 | launch:* | draft_int8 | lookup:* | move_arrays | topk_pallas | both_new)
      echo "" ;;
    *) echo "unknown variant $1" >&2; return 2 ;;
  esac
}
launch_of() {  # the variant's SPECJAX_ROPE_ATTENTION
  case $1 in
    rows16) echo "block_rows=16" ;;
    rows64) echo "block_rows=64" ;;
    launch:*) echo "${1#launch:}" ;;
    *) echo "${SPECJAX_ROPE_ATTENTION:-}" ;;
  esac
}
args_of() {  # the variant's further flags of experiments.profile
  case $1 in
    draft_int8) echo "--draft_weights=float,int8,int8_lm_head --tree=$TREE" ;;
    lookup:*) echo "--tree=$TREE,lookup=${1#lookup:}" ;;
    *) echo "--tree=$TREE" ;;
  esac
}
VARIANTS=${*:-default graphs_traced skip_temp concurrent_regions while_unrolled min_graph_1}
for variant in $VARIANTS; do
  flags=$(flags_of "$variant") || exit 2
  trace=--notrace
  [ "$variant" = graphs_traced ] || [ "${TRACE:-0}" = 1 ] && trace=--trace
  launch=$(launch_of "$variant")
  args=$(args_of "$variant")
  label=$(tr ':=,' '___' <<< "$variant")  # a file name
  moves=${SPECJAX_CACHE_MOVE_PROGRAMS:-row}
  top_k=${SPECJAX_TOP_K:-auto}
  case $variant in move_arrays | both_new) moves=array ;; esac
  case $variant in topk_pallas | both_new) top_k=pallas ;; esac
  echo "[$(date +%H:%M:%S)] $variant: XLA_FLAGS=$flags SPECJAX_ROPE_ATTENTION=$launch" \
    "SPECJAX_CACHE_MOVE_PROGRAMS=$moves SPECJAX_TOP_K=$top_k $args"
  # shellcheck disable=SC2086
  XLA_FLAGS="$flags" SPECJAX_ROPE_ATTENTION="$launch" SPECJAX_CACHE_MOVE_PROGRAMS="$moves" \
    SPECJAX_TOP_K="$top_k" timeout 300 $PY -m experiments.profile \
    $COMMON $args $trace --label="$label" --out="$OUT/$label" > "$OUT/$label.log" 2>&1 ||
    echo "$variant failed: $(tail -n 3 "$OUT/$label.log")"
  cp "$OUT/$label"/profile_*.json "$OUT/" 2>/dev/null
  if [ "$trace" = --trace ]; then  # the trace itself, for a look at the graph replay
    newest=$(ls -t /tmp/specjax_trace_*/spec/*/*/*/*.trace.json.gz 2>/dev/null | head -n 1)
    [ -n "$newest" ] && cp "$newest" "$OUT/$label.trace.json.gz"
  fi
  # The tree loops' optimized HLO (newest last: with draft_int8, the int8 loop's) is kept,
  # gzipped, before the dump goes: where its conversions sit says whether the GEMMs read int8.
  for hlo in "$OUT/$label"/hlo/*jit__tree*after_optimizations.txt; do
    [ -f "$hlo" ] && gzip -c "$hlo" > "$OUT/$label.$(basename "$hlo" | cut -d. -f1).tree_hlo.txt.gz"
  done
  rm -rf "$OUT/$label/hlo"
  grep -E "ms/token" "$OUT/$label.log"
done
