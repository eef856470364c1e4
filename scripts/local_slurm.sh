#!/usr/bin/env bash
# A single-node SLURM on this machine, for `make test-cluster` (tests/cluster/): Debian's slurm-wlm and
# munge, loopback only (controller and node on 127.0.0.1, node name `localhost`), one partition
# `local` holding the node's real CPUs and memory (`slurmd -C`), no cgroups (proctrack/linuxproc,
# task/none: works inside a container), requeueable jobs (JobRequeue=1), no accounting database.
# Idempotent: a second run changes nothing and only checks that munged, slurmctld and slurmd are up
# and that `sinfo` shows the node up. Needs root (and Debian's package registry on the first run).
# Logs: /var/log/slurm/{slurmctld,slurmd}.log and /var/log/munge/munged.log.
set -euo pipefail

LOG_DIR=/var/log/slurm
CONF=/etc/slurm/slurm.conf
RUN_DIR=/run/slurm
STATE_DIR=/var/lib/slurm
NODE=localhost
PARTITION=local

say() { echo ">> local_slurm: $*"; }
fail() {
  echo ">> local_slurm: FAILED: $*" >&2
  exit 1
}

[[ $(id -u) == 0 ]] || fail "run as root (it installs packages and starts daemons)"

# 1. the packages
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
  say "packages present: $(slurmctld -V), $(munged --version 2>&1 | head -1)"
else
  say "installing slurm-wlm and munge from Debian's registry"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
  say "installed $(slurmctld -V)"
fi

# 2. munge's key (Debian's package creates one; a copied image may lack it)
if [[ -s /etc/munge/munge.key ]]; then
  say "munge key present: /etc/munge/munge.key"
else
  mungekey --create --keyfile=/etc/munge/munge.key
  say "munge key created: /etc/munge/munge.key"
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

# 3. slurm.conf from this machine's hardware (written only when it differs from the one in place)
install -d -o slurm -g slurm "$LOG_DIR" "$RUN_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
install -d -o munge -g munge -m 0755 /run/munge
hardware=$(slurmd -C | head -1 | sed -E "s/^NodeName=[^ ]+ //")
wanted=$(
  cat <<EOF
# Written by scripts/local_slurm.sh: a single-node, loopback-only cluster for slmlab's cluster tests.
ClusterName=slmlab
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# no cgroups (a container has none to give): processes tracked by their parent ids, tasks not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
# a requeued job (scontrol requeue, submitit on preemption or time-out) runs again; a restarted slurmd
# brings its node back; a killed job's processes get 5 s between SIGTERM and SIGKILL
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
config_changed=false
if [[ -f $CONF ]] && [[ $(cat "$CONF") == "$wanted" ]]; then
  say "config unchanged: $CONF"
else
  printf '%s\n' "$wanted" >"$CONF"
  config_changed=true
  say "config written: $CONF ($hardware)"
fi

# 4. the daemons (no systemd in a container: started directly; each one's pid file says if it runs)
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
start() { # name pid_file command...
  local name=$1 pid_file=$2
  shift 2
  if running "$pid_file"; then
    say "$name running (pid $(cat "$pid_file"))"
    return 1
  fi
  "$@"
  for _ in $(seq 50); do
    running "$pid_file" && break
    sleep 0.2
  done
  running "$pid_file" || fail "$name did not start; see its log under $LOG_DIR or /var/log/munge"
  say "$name started (pid $(cat "$pid_file"))"
}
start munged /run/munge/munged.pid runuser -u munge -- munged || true
munge -n | unmunge >/dev/null || fail "munge cannot encode and decode a credential"
started_controller=true
start slurmctld "$RUN_DIR/slurmctld.pid" slurmctld || started_controller=false
start slurmd "$RUN_DIR/slurmd.pid" slurmd -N "$NODE" || true
if $config_changed && ! $started_controller; then
  scontrol reconfigure
  say "running daemons told to reread the config (scontrol reconfigure)"
fi

# 5. wait until the controller answers and the node is up
for _ in $(seq 60); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  case $state in
    idle | mixed | allocated | completing) break ;;
    down* | drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
case $state in
  idle | mixed | allocated | completing) ;;
  *) fail "node $NODE is '${state:-not reported}' after 60 s; see $LOG_DIR/slurmctld.log and slurmd.log" ;;
esac
say "cluster up: partition $PARTITION, node $NODE $state ($(sinfo -h -n "$NODE" -o '%c CPUs, %m MB'))"
