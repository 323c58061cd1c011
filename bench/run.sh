#!/usr/bin/env bash
# The benchmark, one command: gsmtpd (null, durable SQLite, SQLite without
# parsing, batched MySQL) against Postfix's smtp-sink, every scenario in
# the same run, each measurement repeated (REPS, default 3), medians in
# one table. Loopback only; everything it starts is stopped by PID.
#
#   bench/run.sh                      # everything
#   bench/run.sh --only a,b --reps 5  # options go to gsmtpd-bench (--help)
#
# Needs: Postfix's smtp-sink and smtp-source (installed from Debian's
# postfix package if missing, without leaving Postfix running or bound to
# port 25); a MySQL/MariaDB server for the
# MySQL rows (skipped with --mysql-url "").
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v smtp-sink >/dev/null || ! command -v smtp-source >/dev/null; then
    echo "bench: installing postfix for smtp-sink and smtp-source (the daemon stays off)"
    # Keep the package scripts from starting Postfix.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi
if pgrep -x master >/dev/null; then
    echo "bench: a Postfix master process is running; stop it first (postfix stop)" >&2
    exit 1
fi

echo "bench: building gsmtpd (release, with MySQL) and the load tools"
cargo build --release --quiet --features mysql
(cd bench && cargo build --release --quiet)

# Up to 5000 idle connections, plus the load's: descriptors to spare.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
    echo "bench: scenario (d) needs 12000 open files, the limit is $(ulimit -n)" >&2
    exit 1
fi
exec bench/target/release/gsmtpd-bench \
    --gsmtpd target/release/gsmtpd \
    --smtp-sink "$(command -v smtp-sink)" \
    --smtp-source "$(command -v smtp-source)" \
    "$@"
