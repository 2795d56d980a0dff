#!/usr/bin/env bash
# A first run as a new user makes it: clone the committed HEAD of this repository into a temporary folder, run the
# two ```bash blocks under "## Quickstart" in its README.md exactly as written, and check that the main job printed
# a sample and that the tests passed. Everything it writes (clone, virtual environment, runs, data, temporary
# files) lives in one temporary folder, removed at the end, pass or fail.
#
#   bash scripts/fresh_clone_check.sh              # both blocks: train + sample, then the whole test suite
#   bash scripts/fresh_clone_check.sh --main-only  # the first block only (CI, which runs the tests itself)
#
# Offline it needs what the README's commands need: a pip that can install torch==2.13.0 and the project's
# dependencies (a reachable index, or PIP_FIND_LINKS / PIP_INDEX_URL pointing at local files). W&B runs offline
# and the HuggingFace hub is not asked, unless WANDB_MODE or HF_HUB_OFFLINE say otherwise.
set -euo pipefail

main_only=false
for arg in "$@"; do
    case "$arg" in
        --main-only) main_only=true ;;
        -h | --help)
            sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "fresh-clone-check: unknown option $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

repo="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
work="$(mktemp -d "${TMPDIR:-/tmp}/minigpt-fresh-clone.XXXXXX")"
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

say() { echo "fresh-clone-check: $*" >&2; }
fail() {
    say "FAILED: $*"
    exit 1
}

git clone --quiet "$repo" "$work/minigpt"
say "cloned $(git -C "$work/minigpt" log -1 --format='%h %s') into $work/minigpt"

# The README's Quickstart, as committed: block n of the ```bash fences between "## Quickstart" and the next heading.
quickstart_block() {
    awk -v want="$1" '
        /^## / { in_quickstart = ($0 == "## Quickstart"); next }
        in_quickstart && /^```bash/ { n++; in_block = (n == want); next }
        in_block && /^```/ { in_block = 0; next }
        in_block { print }
    ' "$work/minigpt/README.md"
}
blocks="$(awk '/^## /{q=($0=="## Quickstart")} q && /^```bash/{n++} END{print n+0}' "$work/minigpt/README.md")"
[ "$blocks" -eq 2 ] || fail "README.md's Quickstart has $blocks \`\`\`bash blocks; this check expects 2 (main job, tests)"

# Run one block in the clone, in a shell of its own as a reader would, its output shown and kept in a log.
run_block() {
    local n="$1" log="$work/block-$1.log"
    local commands
    commands="$(quickstart_block "$n")"
    say "Quickstart block $n:"
    printf '%s\n' "$commands" | sed 's/^/    $ /' >&2
    local status=0
    (
        cd "$work/minigpt"
        unset PYTHONPATH VIRTUAL_ENV # nothing of the calling environment's Python
        export TMPDIR="$work/tmp" HF_DATASETS_CACHE="$work/hf-datasets"
        export WANDB_MODE="${WANDB_MODE:-offline}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
        mkdir -p "$TMPDIR"
        bash -c "$commands"
    ) 2>&1 | tee "$log" || status=$?
    [ "$status" -eq 0 ] || fail "Quickstart block $n exited with status $status (log above)"
}

run_block 1
grep -q "sample (" "$work/block-1.log" || fail "the main job printed no sample (no 'sample (' in its output)"
say "main job: trained and printed a sample"

if [ "$main_only" = false ]; then
    run_block 2
    summary="$(grep -E '[0-9]+ (passed|failed)' "$work/block-2.log" | tail -n 1)"
    # "N failed" or "N error(s)" fails the check; an expected failure ("N xfailed") does not.
    if [ -z "$summary" ] || grep -qE '(^|[^a-z])[0-9]+ (failed|errors?)' <<<"$summary"; then
        fail "the tests did not all pass: ${summary:-no pytest summary}"
    fi
    say "tests: $summary"
fi
say "OK"
