# Sourced by the resumable experiment scripts (reference_sweep.sh, reference_swaps.sh,
# research_goal.sh): `run DIR OVERRIDES...` runs `python -m simulations.run $COMMON
# OVERRIDES` into DIR, skips a DIR that already holds a completed summary.json, and moves a
# failed or interrupted one aside (DIR.failed-<time>) before running it again.
run() {
    dir=$1; shift
    if [ -f "$dir/summary.json" ] && grep -q '"status": "completed"' "$dir/summary.json"; then
        return 0
    fi
    [ -e "$dir" ] && mv "$dir" "$dir.failed-$(date +%s)"
    mkdir -p "$(dirname "$dir")"
    echo "== $dir"
    python -m simulations.run $COMMON "$@" hydra.run.dir="$dir" > "$dir.log" 2>&1 \
        || echo "FAILED $dir (see $dir.log)"
}
