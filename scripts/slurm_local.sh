#!/usr/bin/env bash
# A real, single-node SLURM cluster on this machine (for the cluster tests and for trying the
# SLURM launcher without a cluster):
#
#   scripts/slurm_local.sh start    install slurm-wlm + munge if missing (Debian/Ubuntu, root),
#                                   write a slurm.conf for this machine, start munged, slurmctld
#                                   and slurmd, wait until the node is idle
#   scripts/slurm_local.sh stop     cancel the jobs, stop the three daemons
#   scripts/slurm_local.sh status   sinfo + squeue
#   scripts/slurm_local.sh env      print `export SLURM_CONF=...` (eval "$(scripts/slurm_local.sh env)")
#
# Everything lives in $HALO_SLURM_DIR (default /tmp/halo-slurm): slurm.conf, a private munge
# key and socket, state, spool and the daemons' logs; the system's /etc/slurm and munge service
# are left alone.  Client commands (sbatch, squeue, scontrol, and the jobs themselves) find this
# cluster through SLURM_CONF.  Daemons talk over 127.0.0.1 only.
#
# Exit codes: 0 ok; 2 not root (installing and running slurmd need root); 3 the packages are
# missing and cannot be installed; 4 a daemon did not come up (its log is printed).
set -euo pipefail

DIR=${HALO_SLURM_DIR:-/tmp/halo-slurm}
CTLD_PORT=${HALO_SLURM_CTLD_PORT:-16817}
SLURMD_PORT=${HALO_SLURM_SLURMD_PORT:-16818}
PARTITION=${HALO_SLURM_PARTITION:-debug}
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket"

say() { echo "[slurm_local] $*" >&2; }

pid_alive() {  # pid_alive FILE: the process named in FILE is running
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  { command -v munged && command -v mungekey; } >/dev/null || missing+=(munge)
  ((${#missing[@]})) || return 0
  if ! command -v apt-get >/dev/null; then
    say "missing ${missing[*]} and no apt-get to install them"
    exit 3
  fi
  say "installing slurm-wlm munge (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$DIR/apt.log" 2>&1; then
    apt-get update -qq >>"$DIR/apt.log" 2>&1 || true
    if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$DIR/apt.log" 2>&1; then
      tail -5 "$DIR/apt.log" >&2
      say "could not install slurm-wlm/munge (log: $DIR/apt.log)"
      exit 3
    fi
  fi
}

write_conf() {
  local host node_line mem
  host=$(hostname -s)
  # This machine's real layout (CPUs, sockets, cores, threads, memory) as slurmd sees it.
  node_line=$(slurmd -C | head -n 1)
  node_line=${node_line/NodeName=* CPUs=/NodeName=$host CPUs=}
  # Leave ~10% of the memory to the system, so `--mem` requests are honoured but never overcommit.
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
  node_line=${node_line/RealMemory=$mem/RealMemory=$((mem * 9 / 10))}
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: a single-node cluster on $host for tests and local trials.
ClusterName=halo-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$SOCKET,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups needed (containers often have none writable): plain process tracking.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
# Look at pending jobs often (a requeued job starts as soon as it may; the defaults suit big clusters).
SchedulerParameters=sched_interval=2,bf_interval=2
# Cores and memory are the consumable resources: small jobs share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# Requeue (preemption, timeouts, Lightning's auto-requeue) is allowed.
JobRequeue=1
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=600
KillWait=10
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if pid_alive "$DIR/munge/munged.pid" && munge -n --socket="$SOCKET" | unmunge --socket="$SOCKET" >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p "$DIR/munge"
  chmod 700 "$DIR/munge"
  [ -s "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key"
  chmod 600 "$DIR/munge/munge.key"
  munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  for _ in $(seq 50); do
    munge -n --socket="$SOCKET" | unmunge --socket="$SOCKET" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "munged did not start:"
  tail -20 "$DIR/log/munged.log" >&2 || true
  exit 4
}

node_state() {
  sinfo -h -N -o %T 2>/dev/null | head -n 1
}

start() {
  if [ "$(id -u)" != 0 ]; then
    say "not root: installing SLURM and running slurmd need root"
    exit 2
  fi
  mkdir -p "$DIR/log"
  install_packages
  export SLURM_CONF="$CONF"
  if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && [ "$(node_state)" = idle ]; then
    say "already running ($CONF)"
    return 0
  fi
  stop_daemons quiet
  write_conf
  start_munge
  # -c: start from a clean state (no jobs of an earlier run of this script).
  slurmctld -c -f "$CONF"
  slurmd -f "$CONF" -N "$(hostname -s)"
  local state=""
  for _ in $(seq 120); do
    state=$(node_state)
    case "$state" in
      idle | mixed | allocated) break ;;
    esac
    sleep 0.5
  done
  if [ "$state" != idle ]; then
    say "the node did not become idle (state: '${state:-none}'); logs:"
    tail -20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 4
  fi
  say "up: partition '$PARTITION' on $(hostname -s), $(sinfo -h -o '%c CPUs, %m MB'); SLURM_CONF=$CONF"
}

stop_daemons() {
  local quiet=${1:-}
  local name pidfile
  for name in slurmd slurmctld munge/munged; do
    pidfile="$DIR/$name.pid"
    if pid_alive "$pidfile"; then
      local pid
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
      [ -n "$quiet" ] || say "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
  done
}

stop() {
  export SLURM_CONF="$CONF"
  if pid_alive "$DIR/slurmctld.pid"; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      say "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 100); do
        [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.2
      done
    fi
  fi
  stop_daemons
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    export SLURM_CONF="$CONF"
    sinfo && squeue
    ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *)
    echo "usage: $0 start|stop|status|env   (state in \$HALO_SLURM_DIR, default /tmp/halo-slurm)" >&2
    exit 1
    ;;
esac
