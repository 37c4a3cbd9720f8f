#!/usr/bin/env bash
# What a user sees in the terminal: runs a command in a detached tmux pane and captures the
# pane every few seconds and once at the end (issue 21: the README's terminal excerpt).
#
#   bash docs/experiments/terminal_capture.sh OUT_DIR [command ...]
#
# Default command: the README's default run. OUT_DIR gets capture-<k>.txt (one per
# interval, while the command runs) and final.txt (the pane after it exits, with the
# scrollback). Needs tmux.
set -euo pipefail
out="${1:?usage: terminal_capture.sh OUT_DIR [command ...]}"
shift
command="${*:-python -m simulations.run}"
width="${WIDTH:-150}"
interval="${INTERVAL:-3}"
mkdir -p "$out"
session="fedkd-capture-$$"
done_file="$out/.done"
rm -f "$done_file"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
tmux new-session -d -s "$session" -x "$width" -y 50 \
  "cd '$repo' && $command; echo \"exit code \$?\"; touch '$done_file'; sleep 3600"
trap 'tmux kill-session -t "$session" 2>/dev/null || true' EXIT
k=0
until [[ -f "$done_file" ]]; do
  sleep "$interval"
  k=$((k + 1))
  tmux capture-pane -p -t "$session" > "$out/capture-$k.txt"
done
tmux capture-pane -p -t "$session" -S -500 | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > "$out/final.txt"
echo "captured $k frames and the final pane into $out"
