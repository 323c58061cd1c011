#!/usr/bin/env bash
# Instruction counts per message of the protocol core and pipeline
# (examples/icount.rs under callgrind), compared with bench/icount.baseline.
# Counts are deterministic for a given binary and input, whatever else the
# machine does, so this can run in CI: it fails only on a large regression
# (more than LIMIT percent above the baseline) and says so when the code
# got much faster (time to lower the baseline).
#
#   bench/icount.sh            # check
#   bench/icount.sh --update   # write the current counts as the baseline
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${LIMIT:-25}
baseline=bench/icount.baseline

if ! command -v valgrind >/dev/null; then
    echo "icount: valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
fi
cargo build --release --quiet --example icount
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

status=0
declare -A now
for w in small large; do
    valgrind --tool=callgrind --toggle-collect='*measured*' \
        --callgrind-out-file="$out/$w.out" target/release/examples/icount "$w" \
        >"$out/$w.log" 2>&1
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$out/$w.out")
    msgs=$(grep -o '[0-9]* messages' "$out/$w.log" | awk '{print $1}')
    now[$w]=$((total / msgs))
done

if [ "${1:-}" = "--update" ]; then
    printf 'small %s\nlarge %s\n' "${now[small]}" "${now[large]}" >"$baseline"
    echo "icount: baseline written: small ${now[small]}, large ${now[large]} instructions per message"
    exit 0
fi

printf '%-6s %14s %14s %8s\n' workload baseline now change
while read -r w base; do
    n=${now[$w]}
    change=$(( (n - base) * 100 / base ))
    printf '%-6s %14s %14s %7s%%\n' "$w" "$base" "$n" "$change"
    if [ "$change" -gt "$limit" ]; then
        echo "icount: FAIL: $w costs $change% more instructions per message than the baseline (limit $limit%)" >&2
        status=1
    elif [ "$change" -lt "-$limit" ]; then
        echo "icount: $w got $((-change))% cheaper: lower the baseline with bench/icount.sh --update"
    fi
done <"$baseline"
exit $status
