#!/usr/bin/env bash
# slurm-test-cluster.sh up|down|status -- a throwaway single-node Slurm for
# the end-to-end tests of the Slurm executor (tests/e2e_slurm.rs).
#
#   up      install Debian's munge, slurmctld, slurmd and slurm-client with
#           apt-get (if missing), start munged, slurmctld and slurmd as root
#           without systemd, wait until the node is idle and run one job.
#           Idempotent: when the cluster already answers, it only checks it
#           (about 1 s).
#   down    cancel every job and stop the daemons this script started (by the
#           pids it recorded).
#   status  exit 0 if the node answers and is usable.
#
# Environment:
#   MRBM_SLURM_DIR=/tmp/mrbm-slurm   state, spool, logs, pid files
#   MRBM_SLURM_FAKE_GPUS=1           the node advertises N fake gres/gpu devices
#                                    (character devices cloned from /dev/null),
#                                    so that `gpus` in [executor] is accepted and
#                                    tested; nothing runs on them. 0: none (then
#                                    Slurm refuses --gpus).
#
# Adapted from a tested recipe; the pitfalls it found are handled here:
# munged runs as the munge user with /run/munge present; batch_sched_delay=0
# (else back-to-back jobs wait ~3 s each); no slurmdbd, so job states come
# from `scontrol show job`, not sacct.
set -euo pipefail

DIR=${MRBM_SLURM_DIR:-/tmp/mrbm-slurm}
FAKE_GPUS=${MRBM_SLURM_FAKE_GPUS:-1}
CONF=/etc/slurm/slurm.conf

T0=$(date +%s%N)
log() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[slurm-test-cluster %3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }
die() {
  echo "[slurm-test-cluster] error: $*" >&2
  for f in "$DIR"/log/*.log; do [ -f "$f" ] && { echo "==== $f" >&2; tail -n 30 "$f" >&2; }; done
  exit 1
}
wait_for() {  # wait_for SECONDS CMD...: retry CMD every 0.2 s until it succeeds
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
HOST=$(uname -n | cut -d. -f1)

node_idle() {
  command -v sinfo >/dev/null 2>&1 || return 1
  local s
  s=$(timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  [ "$s" = idle ] || [ "$s" = mixed ] || [ "$s" = allocated ]
}

running() { [ -e /proc/"$1" ] && ! grep -q '^State:[[:space:]]*Z' /proc/"$1"/status 2>/dev/null; }

up() {
  if node_idle && [ -f "$DIR/run/slurmctld.pid" ] && timeout 20 srun -N1 -n1 -t 1 true >/dev/null 2>&1; then
    log "already up: $(sinfo -h -o '%P %a %D %C')"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
  mkdir -p "$DIR"
  rm -rf "$DIR/state" "$DIR/spool" "$DIR/log"
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"

  # 1. packages
  local pkgs="munge slurmctld slurmd slurm-client" missing="" p
  for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    log "apt-get install$missing"
    # Without systemd the postinst scripts would try to start the daemons.
    local remove_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; remove_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    if ! apt-get install -y -q --no-install-recommends $missing > "$DIR/apt.log" 2>&1; then
      apt-get update -q >> "$DIR/apt.log" 2>&1
      apt-get install -y -q --no-install-recommends $missing >> "$DIR/apt.log" 2>&1 \
        || { [ "$remove_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d; tail -n 30 "$DIR/apt.log"; die "apt-get install failed"; }
    fi
    [ "$remove_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    log "packages installed"
  fi

  # 2. munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
  else
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 sh -c 'munge -n | unmunge' || die "munged did not come up (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
    log "munged up (pid $(cat "$DIR/run/munged.pid"))"
  fi

  # 3. slurm.conf (and gres.conf for fake GPUs)
  local ncpu mem node_gres="" gres_types=""
  ncpu=$(nproc)
  mem=$(awk '/^MemTotal:/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
  mkdir -p /etc/slurm
  rm -f /etc/slurm/gres.conf
  if [ "$FAKE_GPUS" -gt 0 ]; then
    mkdir -p "$DIR/fakegpu"
    local i
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
      [ -c "$DIR/fakegpu/nvidia$i" ] || mknod "$DIR/fakegpu/nvidia$i" c 1 3
    done
    echo "Name=gpu File=$DIR/fakegpu/nvidia[0-$((FAKE_GPUS - 1))]" > /etc/slurm/gres.conf
    node_gres="Gres=gpu:$FAKE_GPUS"
    gres_types="GresTypes=gpu"
  fi
  cat > "$CONF" <<EOF
# Written by tools/slurm-test-cluster.sh (mrbm): a single-node test cluster.
ClusterName=mrbmtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# the default batch_sched_delay=3 makes back-to-back sbatch jobs wait ~3 s
SchedulerParameters=batch_sched_delay=0
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
$gres_types
ReturnToService=2
# finished jobs stay visible to scontrol for 10 minutes
MinJobAge=600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$mem $node_gres State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

  # 4. daemons: stop ones of an earlier start that no longer answer
  stop slurmd; stop slurmctld
  slurmctld
  slurmd
  local state=""
  for _ in $(seq 1 300); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.2
  done
  [ "$state" = idle ] || { sinfo -R >&2 || true; die "node not idle (state '$state')"; }
  log "slurmctld (pid $(cat "$DIR/run/slurmctld.pid")) and slurmd (pid $(cat "$DIR/run/slurmd.pid")) up, node $HOST idle"

  # 5. smoke test
  timeout 60 srun -N1 -n1 -t 1 true || die "srun smoke test failed"
  log "ready: $(sinfo -h -o '%P %a %D %C')"
}

# stop NAME: TERM the pid in $DIR/run/NAME.pid if it is still NAME; KILL after 10 s
stop() {
  local name=$1 f="$DIR/run/$1.pid" pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if running "$pid" && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then echo "$name ($pid) ignored SIGTERM, killing"; kill -KILL "$pid"; fi
    log "stopped $name ($pid)"
  fi
  rm -f "$f"
}

down() {
  if command -v squeue >/dev/null 2>&1 && timeout 5 squeue -h >/dev/null 2>&1; then
    local jobs
    jobs=$(squeue -h -o %A)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs
      for _ in $(seq 1 50); do [ -z "$(squeue -h -o %A)" ] && break; sleep 0.2; done
    fi
  fi
  stop slurmd
  stop slurmctld
  stop munged   # only if this script started it
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) node_idle ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
