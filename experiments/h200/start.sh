#!/usr/bin/env bash
# A lease's first device call: the wheels installed, the working tree copied to ~/repo, the
# folders made, then COMMAND started there in the background (setsid), so that later calls
# (weight parts, polls) can follow within the 30 s the lent machine waits.
#
#   bash experiments/h200/start.sh COMMAND...      # e.g. bash experiments/h200/heads.sh ~/w
#
# carry [".whl", ".carry/prompts", ".carry/prompt_ids"] with it (prepare_lease.py makes them).
# COMMAND runs in ~/repo with PYTHONPATH=~/site (ml_collections, gguf), SPECJAX_CACHE=~/sc
# (weights joined into ~/sc/models, heads unpacked into ~/sc/drafters), PROMPT_DIR and PY
# set; its output goes to ~/w/start.log. Poll with experiments/h200/poll.sh.
set -eu
[ $# -ge 1 ] || { echo "usage: start.sh COMMAND..." >&2; exit 2; }
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$HOME/site" .whl/*.whl
fi
rm -rf "$HOME/repo" && cp -r . "$HOME/repo"
mkdir -p "$HOME/w/out" "$HOME/w/logs" "$HOME/sc/models" "$HOME/sc/drafters"
cd "$HOME/repo"
export PYTHONPATH=$HOME/site${PYTHONPATH:+:$PYTHONPATH} SPECJAX_CACHE=$HOME/sc
export PROMPT_DIR=$HOME/repo/.carry/prompts PY=${PY:-python3}
setsid nohup "$@" > "$HOME/w/start.log" 2>&1 < /dev/null &
# Its pid, for poll.sh: a poll stops waiting once the command is gone. (Not a process
# group leader here, setsid runs it in place: $! is the command itself.)
echo $! > "$HOME/w/start.pid"
echo "started in $HOME/repo (pid $!): $*"
