#!/usr/bin/env bash
# Bring up a real local Slurm cluster for the launch tests: two emulated nodes (node1, node2) on
# 127.0.0.1, partitions `low` (default, preemptable) and `high`, no accounting database.
# Idempotent: a cluster that is already up with this configuration is left alone.
# Needs root and Debian 12 (slurm-wlm 22.05). Facts behind every setting: ../shared/notes/slurm-local.md.
#   bash .ci/slurm-up.sh          # install if needed, (re)start, wait for two idle nodes
#   bash .ci/slurm-down.sh        # stop the daemons, remove the /etc/hosts entry
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/spool/slurmctld
LOG_DIR=/var/log/slurm
NODES="node1 node2"
HOSTS_LINE="127.0.0.1 node1 node2 # recurlm-slurm-local"

fail() {
    echo "slurm-up: FAILED: $*" >&2
    for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd-node1.log "$LOG_DIR"/slurmd-node2.log; do
        [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}
say() { echo "slurm-up: $*"; }

[ "$(id -u)" = 0 ] || fail "must run as root (installs packages, starts daemons)"

# 1. packages ---------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sinfo >/dev/null; then
    command -v apt-get >/dev/null || fail "Slurm is not installed and apt-get is missing (Debian/Ubuntu needed)"
    say "installing Debian's Slurm packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || fail "apt-get update"
    apt-get install -y -qq --no-install-recommends slurm-wlm slurmctld slurmd slurm-client munge \
        slurm-wlm-basic-plugins >/dev/null || fail "apt-get install of the Slurm packages"
fi

# 2. configuration ----------------------------------------------------------------------------
HOST=$(hostname -s)
mkdir -p "$CONF_DIR" "$STATE_DIR" "$LOG_DIR" /var/spool/slurmd
NEW_CONF=$(cat <<EOF
# Written by recurlm/.ci/slurm-up.sh: two emulated nodes on one host for the launch tests.
ClusterName=recurlm-local
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire + 1 s (default 120 s)
AuthInfo=cred_expire=30
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=${STATE_DIR}
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdLogFile=${LOG_DIR}/slurmd-%n.log
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# a job whose dependency can never be met is cancelled instead of pending forever
DependencyParameters=kill_invalid_depend
SchedulerParameters=bf_interval=2,sched_interval=5
# keep finished jobs visible to scontrol for 10 min (no accounting database here)
MinJobAge=600
KillWait=30
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=node[1-2] NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=[17001-17002] CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=low Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=15
PartitionName=high Nodes=node[1-2] Default=NO MaxTime=INFINITE State=UP PriorityTier=10
EOF
)

cluster_ok() {
    # both nodes answer and none is down/drained
    local states
    states=$(sinfo -h -N -p low -o '%N %t' 2>/dev/null) || return 1
    [ "$(echo "$states" | grep -cE '^node[12] (idle|alloc|mix|comp)')" = 2 ]
}

if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$NEW_CONF" ] && grep -q "recurlm-slurm-local" /etc/hosts \
        && [ -f /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null && cluster_ok; then
    say "cluster already up:"
    sinfo
    exit 0
fi
echo "$NEW_CONF" > "$CONF"
grep -q "recurlm-slurm-local" /etc/hosts || echo "$HOSTS_LINE" >> /etc/hosts

# 3. daemons (stopped by pid file, never by name) ---------------------------------------------
stop_pidfile() {
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
}
for n in $NODES; do stop_pidfile /run/slurmd-$n.pid; done
stop_pidfile /run/slurmctld.pid

# munge
mkdir -p /run/munge /etc/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    su -s /bin/sh munge -c "mungekey --create --keyfile=/etc/munge/munge.key" || fail "mungekey --create"
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid
    su -s /bin/sh munge -c "/usr/sbin/munged" || fail "starting munged"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || fail "munge -n | unmunge does not work"
fi

# a fresh controller state: job ids restart at 1, no stale jobs or node states
rm -rf "${STATE_DIR:?}"/*
/usr/sbin/slurmctld -c || fail "slurmctld -c did not start"
for n in $NODES; do
    mkdir -p /var/spool/slurmd/$n
    /usr/sbin/slurmd -N "$n" || fail "slurmd -N $n did not start"
done

# 4. wait for two idle nodes ------------------------------------------------------------------
for i in $(seq 120); do
    if cluster_ok; then
        say "cluster up after ${i}x0.5 s:"
        sinfo
        exit 0
    fi
    sleep 0.5
done
sinfo -N -l >&2 || true
fail "nodes node1/node2 did not become idle within 60 s"
