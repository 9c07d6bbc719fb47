#!/usr/bin/env bash
# A polling device call: waits up to SECONDS (or until ~/w/status has a line matching UNTIL,
# default "] done", heads.sh's last stage line; UNTIL=packed waits for its heads' packing
# too, before `parts.py emit` calls; or until the started command has ended), prints the
# status and the start log's tail, and copies what the run wrote so far (~/w/out, logs,
# status, the training runs' metrics.jsonl and config.json; traces, HLO dumps and checkpoints
# left out) into $OUT as one results.tgz, so a machine lost mid-run loses only the stages in flight.
#
#   bash experiments/h200/poll.sh 280
#
# Keep SECONDS under the call's limit, and make the next call at once: the lent machine goes
# back 30 s after a call ends. Never run anything on the project machine between two polls.
set -u
SECONDS_TO_WAIT=${1:?seconds}
W=${W:-$HOME/w}
end=$(($(date +%s) + SECONDS_TO_WAIT))
# UNTIL is an extended regular expression (grep -E): 'exact-f32 (ok|failed)' means either
# (a basic one, before the twenty-fourth session: that pattern never matched). The wait also
# ends when the started command is gone (start.sh's ~/w/start.pid): a run cut by its
# deadline, or a failing stage, never writes what UNTIL waits for (the twenty-fourth
# session's polls waited ~55 s past the stage they watched for). POLL_EVERY: seconds between
# looks (default 5).
why="waited $SECONDS_TO_WAIT s"
while [ "$(date +%s)" -lt "$end" ]; do
  if grep -Eq "${UNTIL:-\] done}" "$W/status" 2>/dev/null; then why="matched"; break; fi
  if [ -s "$W/start.pid" ] && ! kill -0 "$(cat "$W/start.pid")" 2>/dev/null; then
    why="the started command has ended"; break
  fi
  sleep "${POLL_EVERY:-5}"
done
echo "poll: $why"
tail -n 25 "$W/status" 2>/dev/null
echo "--- start.log"
tail -n 5 "$W/start.log" 2>/dev/null
if [ -n "${OUT:-}" ] && [ -d "$W" ]; then
  # With each training run's metrics and config (runs/NAME/): its loss curve, the head lost.
  (cd "$W" && tar czf "$OUT/results.tgz" --exclude='*.npz' --exclude=hlo --exclude=traces \
    --exclude=checkpoints out logs status start.log runs/*/metrics.jsonl runs/*/config.json \
    2>/dev/null)
  size=$(stat -c %s "$OUT/results.tgz")
  echo "results.tgz: $size bytes"
  # A returned file over 16 MiB is refused, and the call's other files with it.
  [ "$size" -gt $((16 * 1024 * 1024)) ] && rm "$OUT/results.tgz" &&
    echo "results.tgz was over 16 MiB and is left there: bring back parts of $W/out instead"
fi
exit 0
