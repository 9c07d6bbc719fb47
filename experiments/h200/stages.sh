# Stages of a timed run on a lent GPU (sourced by heads.sh, decode_speed.sh and
# fused_projection.sh, under `set -a`). Needs W (the work folder: <W>/status,
# <W>/logs/<stage>.log, <W>/out); sets the defaults every script shares:
#   DEADLINE (epoch seconds, default 1500 s from now), SPECJAX_CACHE, PROMPT_DIR (the
#   evaluation prompts), PY (the Python to run).
#   STAGE_MARGIN: seconds a stage leaves before the deadline (default 20).
#   SKIP="name ...": stages left out (a second launch after a first one was stopped).

mkdir -p "$W/logs" "$W/out"
export PYTHONUNBUFFERED=1
export SPECJAX_CACHE=${SPECJAX_CACHE:-$HOME/.cache/specjax}
DEADLINE=${DEADLINE:-$(($(date +%s) + 1500))}
PROMPT_DIR=${PROMPT_DIR:-$PWD/.carry/prompts}
PY=${PY:-python}

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$W/status"; }
listed() { case " $2 " in *" $1 "*) return 0 ;; esac; return 1; }  # listed WORD "WORD ..."
left() { echo $((DEADLINE - $(date +%s))); }

# stage NAME MIN_SECONDS_LEFT COMMAND...: runs COMMAND unless fewer seconds are left.
stage() {
  local name=$1 need=$2; shift 2
  if listed "$name" "${SKIP:-}"; then log "$name skipped (SKIP)"; return 1; fi
  if [ "$(left)" -lt "$need" ]; then log "$name skipped ($(left) s left, needs $need)"; return 1; fi
  local start=$SECONDS
  log "$name started"
  # No stage outlives the deadline: what it wrote so far (results are saved row by row) stays.
  if timeout "$(($(left) - ${STAGE_MARGIN:-20}))" bash -c '"$@"' "$name" "$@" \
    > "$W/logs/$name.log" 2>&1; then
    log "$name ok $((SECONDS - start)) s"
  else
    log "$name failed $((SECONDS - start)) s (rc $?): $(tail -n 2 "$W/logs/$name.log" | tr '\n' ' ')"
    return 1
  fi
}

# wait_for_files FILE...: until every file exists (brought by later device calls); gives up
# when fewer than 120 s are left before the deadline.
wait_for_files() {
  for f in "$@"; do
    while [ ! -f "$f" ]; do
      [ "$(left)" -lt 120 ] && { log "gave up waiting for $f"; return 1; }
      sleep 2
    done
  done
}
