#!/usr/bin/env bash
# The MySQL store under load: group commit (the default max_batch) against
# one INSERT and one COMMIT per message (max_batch = 1, what the original
# PHP daemon did), with the same load from smtp-load. Prints messages/s,
# latency and gsmtpd's CPU time per message side by side.
#
#   bench/mysql.sh                  # 50 connections, 5000 messages of 1 KB
#   CONNECTIONS=100 MESSAGES=20000 SIZE=4096 bench/mysql.sh
#
# Needs a MySQL/MariaDB server (GSMTPD_BENCH_MYSQL_URL, default
# mysql://root@127.0.0.1:3306/test) and its command-line client. Works in a
# scratch database that it drops at the end; stops what it started by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

url=${GSMTPD_BENCH_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
connections=${CONNECTIONS:-50}
messages=${MESSAGES:-5000}
size=${SIZE:-1024}
time_limit=${TIME_LIMIT:-300}

# mysql://user[:password]@host[:port]/database
re='^mysql://([^:@/]+)(:([^@/]*))?@([^:/]+)(:([0-9]+))?(/.*)?$'
if [[ ! $url =~ $re ]]; then
    echo "bench: cannot parse $url (want mysql://user[:password]@host[:port]/db)" >&2
    exit 2
fi
db_user=${BASH_REMATCH[1]}
db_pass=${BASH_REMATCH[3]}
db_host=${BASH_REMATCH[4]}
db_port=${BASH_REMATCH[6]:-3306}
client=$(command -v mariadb || command -v mysql || true)
if [ -z "$client" ]; then
    echo "bench: needs the mariadb or mysql command-line client" >&2
    exit 2
fi
sql() { MYSQL_PWD=$db_pass "$client" -h "$db_host" -P "$db_port" -u "$db_user" -N -B -e "$1"; }

scratch="gsmtpd_bench_$$_$(date +%s)"
work=$(mktemp -d)
pid=""

stop_server() {
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    # Graceful shutdown drains the store queue; give it 30 s, then insist.
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "bench: gsmtpd $pid did not stop, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    pid=""
}
cleanup() {
    stop_server
    sql "DROP DATABASE IF EXISTS \`$scratch\`" || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "==> building gsmtpd and smtp-load (release)"
cargo build --release --quiet --features mysql
cargo build --release --quiet --manifest-path bench/Cargo.toml
target=${CARGO_TARGET_DIR:-$root/target}
bench_target=${CARGO_TARGET_DIR:-$root/bench/target}
gsmtpd=$target/release/gsmtpd
smtp_load=$bench_target/release/smtp-load

sql "CREATE DATABASE \`$scratch\`"
store_url="mysql://$db_user${db_pass:+:$db_pass}@$db_host:$db_port/$scratch"
ticks=$(getconf CLK_TCK)

# utime + stime of a process, in clock ticks (fields 14 and 15 of
# /proc/PID/stat, counted after the command name, which may hold spaces).
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}

# run NAME MAX_BATCH: one gsmtpd, one load; leaves NAME's numbers in
# $work/NAME.result as "rate p50 p99 cpu_us ok temp perm".
run() {
    local name=$1 max_batch=$2
    local cfg=$work/$name.toml log=$work/$name.log out=$work/$name.out
    cat >"$cfg" <<EOF
hostname = "bench.test"
allowed_hosts = ["*"]
max_clients = 1000
# Connections and the listening address only: a log line per message would
# be measured too.
log_level = "warn,gsmtpd::server=info,gsmtpd::server::conn=warn"

[[listener]]
addr = "127.0.0.1:0"

[[store]]
kind = "mysql"
url = "$store_url"
table = "new_mail_$name"
max_batch = $max_batch
EOF
    "$gsmtpd" -c "$cfg" 2>"$log" &
    pid=$!
    local addr=""
    for _ in $(seq 1 100); do
        addr=$(sed -n 's/.*listening addr=\([0-9.:]*\).*/\1/p' "$log" | head -n 1)
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "bench: gsmtpd ($name) did not start:" >&2
        cat "$log" >&2
        exit 1
    fi
    local before after
    before=$(cpu_ticks "$pid")
    echo "==> $name (max_batch = $max_batch): gsmtpd $pid on $addr"
    local status=0
    "$smtp_load" --addr "$addr" --connections "$connections" --messages "$messages" \
        --size "$size" --pipelining --time-limit "$time_limit" >"$out" || status=$?
    after=$(cpu_ticks "$pid")
    stop_server
    sed 's/^/    /' "$out"
    if [ "$status" -ne 0 ]; then
        echo "bench: smtp-load ($name) did not get a 250 for every message" >&2
        exit 1
    fi
    local result ok rows
    result=$(grep '^RESULT ' "$out")
    ok=$(sed 's/.* ok=\([0-9]*\).*/\1/' <<<"$result")
    rows=$(sql "SELECT COUNT(*) FROM \`$scratch\`.\`new_mail_$name\`")
    if [ "$rows" -ne "$ok" ]; then
        echo "bench: $name: $ok messages got 250 but new_mail_$name has $rows rows" >&2
        exit 1
    fi
    awk -v r="$result" -v cpu=$((after - before)) -v tck="$ticks" 'BEGIN {
        n = split(r, kv, " ")
        for (i = 2; i <= n; i++) { split(kv[i], p, "="); v[p[1]] = p[2] }
        printf "%s %s %s %.1f %s %s %s\n", v["rate"], v["p50_ms"], v["p99_ms"],
            cpu / tck / v["ok"] * 1e6, v["ok"], v["temp"], v["perm"]
    }' >"$work/$name.result"
}

run batched 512
run single 1

read -r b_rate b_p50 b_p99 b_cpu b_ok b_temp b_perm <"$work/batched.result"
read -r s_rate s_p50 s_p99 s_cpu s_ok s_temp s_perm <"$work/single.result"
echo
echo "MySQL store, $messages messages of $size octets over $connections connections (pipelining)"
awk -v br="$b_rate" -v sr="$s_rate" -v b50="$b_p50" -v s50="$s_p50" \
    -v b99="$b_p99" -v s99="$s_p99" -v bc="$b_cpu" -v sc="$s_cpu" \
    -v bok="$b_ok/$b_temp/$b_perm" -v sok="$s_ok/$s_temp/$s_perm" 'BEGIN {
    f = "%-28s %16s %16s %8s\n"
    printf f, "", "batched (512)", "per message (1)", "ratio"
    printf f, "messages/s", sprintf("%.1f", br), sprintf("%.1f", sr), sprintf("%.2fx", br / sr)
    printf f, "p50 latency (ms)", b50, s50, sprintf("%.2fx", s50 / b50)
    printf f, "p99 latency (ms)", b99, s99, sprintf("%.2fx", s99 / b99)
    printf f, "gsmtpd CPU per message (us)", bc, sc, sprintf("%.2fx", sc / bc)
    printf f, "replies 250/4xx/5xx", bok, sok, ""
    print "ratio: batched over per-message for messages/s; per-message over batched for the rest"
}'
