#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for trying `snakemake --profile slurm` and
# for CI. Debian's slurm-wlm (slurmctld + slurmd), munge, and slurmdbd on MariaDB (so `sacct`
# works: the executor plugin polls it). No systemd: daemons are started directly and tracked by
# PID files under $STATE; `down` stops only the daemons that `up` started.
#
#   sudo scripts/slurm-cluster.sh up       # install if needed, configure, start, wait until idle
#   sudo scripts/slurm-cluster.sh status   # what runs, who started it, sinfo
#   sudo scripts/slurm-cluster.sh down     # stop what `up` started (configs and accounting stay)
#
# Environment (all optional):
#   MASTERS_SLURM_STATE       state dir: PID files, logs, spool (default /var/lib/masters-slurm)
#   MASTERS_SLURM_PARTITIONS  partitions over the one node, the first is the default ("main debug")
#   MASTERS_SLURM_FAKE_GPUS   advertise this many GPUs of type h100 that do not exist (default 0):
#                             lets a CPU machine check that GPU requests reach sbatch
#
# The node is NodeName=localhost with the machine's CPUs and memory (from `slurmd -C`, less
# 512 MB); proctrack/linuxproc and task/none avoid cgroup and hostname trouble in containers.
# Idempotent: `up` twice leaves one set of daemons. Needs root (apt-get, daemons).
set -euo pipefail

STATE=${MASTERS_SLURM_STATE:-/var/lib/masters-slurm}
PARTITIONS=${MASTERS_SLURM_PARTITIONS:-main debug}
FAKE_GPUS=${MASTERS_SLURM_FAKE_GPUS:-0}
CLUSTER=masters
MARKER="# written by masters scripts/slurm-cluster.sh"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
GRES_CONF=/etc/slurm/gres.conf
DB_PASS_FILE=$STATE/db-password
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stopped in reverse

say() { echo "slurm-cluster: $*"; }
die() { echo "slurm-cluster: error: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (installs packages and starts daemons)"; }

install_packages() {
  local missing=()
  for cmd in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd; do
    command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing Debian packages (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' init scripts from starting daemons themselves
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends slurm-wlm slurm-client slurmdbd munge mariadb-server >/dev/null
  rm -f /usr/sbin/policy-rc.d
}

# ---- PID bookkeeping: $STATE/pids/<daemon> exists only for daemons this script started
pidfile() {  # mariadbd runs as mysql and writes into a directory of its own
  if [ "$1" = mariadbd ]; then echo "$STATE/mariadb/mariadbd.pid"; else echo "$STATE/pids/$1.pid"; fi
}
ours_alive() { local f; f=$(pidfile "$1"); [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
running_any() { pgrep -x "$1" >/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$((limit * 4))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  die "timed out after ${limit}s waiting for $what (logs: $STATE/log)"
}

start() {  # start NAME: start a daemon unless ours or someone else's is running
  local name=$1
  if ours_alive "$name"; then say "$name already running (started by this script)"; return; fi
  if running_any "$name"; then say "$name already running (not started by this script: left alone)"; return; fi
  local pf; pf=$(pidfile "$name")
  case $name in
    munged)
      install -d -o munge -g munge -m 0755 /run/munge
      [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
      rm -f /run/munge/munged.pid
      runuser -u munge -- /usr/sbin/munged
      wait_for 10 "munged" test -s /run/munge/munged.pid
      cp /run/munge/munged.pid "$pf"
      wait_for 10 "munge credentials" sh -c 'munge -n | unmunge' ;;
    mariadbd)
      install -d -o mysql -g mysql -m 0755 /run/mysqld "$STATE/mariadb"
      [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
      nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file="$pf" \
        --socket=/run/mysqld/mysqld.sock --log-error="$STATE/mariadb/mariadb.log" >/dev/null 2>&1 &
      wait_for 60 "MariaDB" mariadb -e "SELECT 1" ;;
    slurmdbd)
      /usr/sbin/slurmdbd
      wait_for 30 "slurmdbd" sacctmgr -n list cluster ;;
    slurmctld)
      /usr/sbin/slurmctld
      wait_for 30 "slurmctld" scontrol ping ;;
    slurmd)
      /usr/sbin/slurmd -N localhost ;;
  esac
  # slurm daemons and mariadbd write the PID file themselves (configured to $pf)
  wait_for 10 "$name PID file" test -s "$pf"
  say "started $name (pid $(cat "$pf"))"
}

stop() {  # stop NAME: only if this script started it
  local name=$1 pf; pf=$(pidfile "$name")
  [ -f "$pf" ] || return 0
  local pid; pid=$(cat "$pf")
  if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${name:0:15}" ]; then
    kill "$pid"
    for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    say "stopped $name (pid $pid)"
  fi
  rm -f "$pf"
}

# ---- configuration
ours_or_absent() { [ ! -e "$1" ] || head -1 "$1" | grep -qF "$MARKER"; }

write_configs() {
  for f in "$CONF" "$DBD_CONF" "$GRES_CONF"; do
    ours_or_absent "$f" || die "$f exists and was not written by this script: refusing to replace a real cluster's configuration"
  done
  install -d -m 0755 /etc/slurm "$STATE" "$STATE/pids" "$STATE/log" "$STATE/ctld" "$STATE/spool"
  [ -s "$DB_PASS_FILE" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DB_PASS_FILE")
  local node cpus mem gres="" parts="" default=YES
  node=$(slurmd -C | head -1)
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$((mem - 512))
  if [ "$FAKE_GPUS" -gt 0 ]; then  # empty files stand in for the devices slurmd counts
    gres=" Gres=gpu:h100:$FAKE_GPUS"
    install -d "$STATE/fake-gpus"
    for ((i = 0; i < FAKE_GPUS; i++)); do touch "$STATE/fake-gpus/nvidia$i"; done
  fi
  for p in $PARTITIONS; do
    parts+="PartitionName=$p Nodes=localhost Default=$default MaxTime=INFINITE State=UP"$'\n'
    default=NO
  done
  cat > "$CONF" <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu,gres/gpu:h100
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
MinJobAge=300
GresTypes=gpu
NodeName=localhost CPUs=$cpus RealMemory=$mem$gres State=UNKNOWN
$parts
EOF
  {
    echo "$MARKER"
    if [ "$FAKE_GPUS" -gt 0 ]; then
      echo "AutoDetect=off"
      echo "NodeName=localhost Name=gpu Type=h100 File=$STATE/fake-gpus/nvidia[0-$((FAKE_GPUS - 1))]"
    fi
  } > "$GRES_CONF"
  (umask 077; cat > "$DBD_CONF" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$(cat "$DB_PASS_FILE")
StorageLoc=slurm_acct_db
EOF
  )
  chmod 0644 "$CONF" "$GRES_CONF"
}

database() {
  mariadb <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$(cat "$DB_PASS_FILE")';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$(cat "$DB_PASS_FILE")';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

associations() {  # the cluster, an account and root's association, so sacct/-A work
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i -Q add account masters Cluster="$CLUSTER" Description=masters Organization=masters >/dev/null 2>&1 || true
  sacctmgr -i -Q add user root Account=masters Cluster="$CLUSTER" DefaultAccount=masters >/dev/null 2>&1 || true
}

node_state() { sinfo -h -N -n localhost -o %T 2>/dev/null | head -1; }

up() {
  need_root
  local t0=$SECONDS
  install_packages
  if ours_alive slurmctld && ours_alive slurmd; then
    # configs are only (re)written for a cluster that is not running: settings change on down + up
    say "already up (configuration kept; \`$0 down\` then \`up\` to apply other settings)"
  else
    write_configs
  fi
  start munged
  start mariadbd
  database
  start slurmdbd
  associations
  start slurmctld
  start slurmd
  local state=""
  for _ in $(seq 240); do
    state=$(node_state)
    case $state in
      idle|mixed|allocated) break ;;
      down*|drain*|inval*) scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.25
  done
  case $state in idle|mixed|allocated) ;; *) die "node localhost is '$state', not idle (logs: $STATE/log)" ;; esac
  say "up in $((SECONDS - t0)) s: node localhost $state ($(sinfo -h -N -n localhost -o '%c CPUs, %m MB' | head -1); partitions $(sinfo -h -o %P | paste -sd' '))"
}

down() {
  need_root
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop "${DAEMONS[$i]}"; done
  say "down"
}

status() {
  local rc=0
  for name in "${DAEMONS[@]}"; do
    if ours_alive "$name"; then echo "$name: running (pid $(cat "$(pidfile "$name")"), started by this script)"
    elif running_any "$name"; then echo "$name: running (not started by this script)"
    else echo "$name: stopped"; rc=1; fi
  done
  if [ $rc = 0 ]; then sinfo; fi
  return $rc
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
