#!/usr/bin/env bash
# Stop the local Slurm cluster started by .ci/slurm-up.sh (daemons by pid file) and remove the
# node names from /etc/hosts. munged is left running (other tools may use it).
set -uo pipefail

stop_pidfile() {
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
}
for n in node1 node2; do stop_pidfile /run/slurmd-$n.pid; done
stop_pidfile /run/slurmctld.pid
if grep -q "recurlm-slurm-local" /etc/hosts; then
    # /etc/hosts may be a bind mount: rewrite it in place rather than replacing the file
    kept=$(grep -v "recurlm-slurm-local" /etc/hosts)
    printf '%s\n' "$kept" > /etc/hosts
fi
echo "slurm-down: stopped"
