#!/usr/bin/env bash
# A real Slurm for the tests: slurmctld on a head host, slurmd on two compute hosts.
#
#   tests/slurm/cluster.sh start [STATE_DIR]    # prints the lines of STATE_DIR/env (SLURM_CONF=...)
#   tests/slurm/cluster.sh stop  [STATE_DIR]    # stops only what start started, removes the hosts
#   tests/slurm/cluster.sh run   [STATE_DIR] -- CMD...   # CMD on the head host (sbatch, squeue, ...)
#
# Each host is a network + UTS namespace (its own hostname and address) on a bridge; the
# addresses exist only inside those namespaces, and the hosts share this machine's file system,
# as a cluster shares NFS. Slurm and munge come from Debian's packages (installed with apt-get when
# missing). Needs root. Daemons are entered with `nsenter --net --uts` rather than `ip netns exec`,
# which remounts /sys. No cgroups (proctrack/linuxproc, task/none) and no accounting database.
#
# The cluster: partitions `main` (default, MaxTime 8 h, preemptible: PreemptMode=REQUEUE) and
# `high` (PriorityTier 10: its jobs requeue `main`'s), each over both nodes (8 CPUs each, declared: jobs of
# one thread share the machine's cores); KillWait 30 s; a requeued job waits cred_expire (5 s) to start again.
set -euo pipefail

action=${1:?usage: cluster.sh start|stop|run [STATE_DIR] [-- CMD...]}
shift
state=/tmp/semisup-slurm
if [[ $# -gt 0 && "$1" != "--" ]]; then state=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift
state=$(realpath -m "$state")
prefix=semisup
bridge=br-$prefix
hosts=(head c1 c2)
declare -A addr=([head]=10.213.0.1 [c1]=10.213.0.2 [c2]=10.213.0.3)
marker="# $prefix-slurm test cluster ($state)"

die() { echo "cluster.sh: $*" >&2; exit 1; }
netns() { echo "/run/netns/$prefix-$1"; }
on_host() {  # on_host HOST CMD...: CMD with HOST's network and hostname
  local host=$1; shift
  SLURM_CONF="$state/slurm.conf" nsenter --net="$(netns "$host")" --uts="$state/uts/$host" -- "$@"
}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; } \
    || { echo "cluster.sh: apt-get could not install slurm-wlm and munge" >&2; exit 3; }
}

start_munge() {
  # One munged serves every host: its socket is a file, and the hosts share the file system.
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
  [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile /etc/munge/munge.key
  chown -R munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
  chmod 0700 /etc/munge && chmod 0600 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$state/run/munged.pid"  # ours: stop removes it
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  die "munged did not start"
}

make_hosts() {
  ip link show "$bridge" >/dev/null 2>&1 || { ip link add "$bridge" type bridge && ip link set "$bridge" up; }
  mkdir -p "$state/uts"
  for h in "${hosts[@]}"; do
    [[ -e "$(netns "$h")" ]] && die "$(netns "$h") exists: run 'cluster.sh stop' first"
    ip netns add "$prefix-$h"
    ip link add "v$prefix-$h" type veth peer name eth0 netns "$prefix-$h"
    ip link set "v$prefix-$h" master "$bridge" up
    ip -n "$prefix-$h" addr add "${addr[$h]}/24" dev eth0
    ip -n "$prefix-$h" link set eth0 up
    ip -n "$prefix-$h" link set lo up
    touch "$state/uts/$h"
    unshare --uts="$state/uts/$h" hostname "$prefix-$h"
  done
  # Names resolve on every host (torch.distributed's MASTER_ADDR is a node's name).
  { echo "$marker"; for h in "${hosts[@]}"; do echo "${addr[$h]} $prefix-$h"; done; echo "$marker end"; } >>/etc/hosts
}

write_config() {
  mkdir -p "$state"/{ctld,log,run} "$state/spool/$prefix-c1" "$state/spool/$prefix-c2"
  cat >"$state/slurm.conf" <<EOF
ClusterName=$prefix
SlurmctldHost=$prefix-head(${addr[head]})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool/%n
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd-%n.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=600
InactiveLimit=0
NodeName=$prefix-c1 NodeAddr=${addr[c1]} CPUs=8 RealMemory=4000 State=UNKNOWN
NodeName=$prefix-c2 NodeAddr=${addr[c2]} CPUs=8 RealMemory=4000 State=UNKNOWN
PartitionName=main Nodes=$prefix-c[1-2] Default=YES MaxTime=08:00:00 PriorityTier=1 PreemptMode=REQUEUE State=UP
PartitionName=high Nodes=$prefix-c[1-2] MaxTime=08:00:00 PriorityTier=10 PreemptMode=OFF State=UP
EOF
  echo "SLURM_CONF=$state/slurm.conf" >"$state/env"
}

start() {
  [[ $(id -u) == 0 ]] || die "needs root (network namespaces, a bridge, /etc/hosts)"
  for tool in ip nsenter unshare; do command -v $tool >/dev/null || die "$tool is missing"; done
  install_packages
  mkdir -p "$state/run"
  write_config
  start_munge
  make_hosts
  on_host head slurmctld -i
  for h in c1 c2; do on_host "$h" slurmd -N "$prefix-$h"; done
  for _ in $(seq 150); do
    idle=$(on_host head sinfo -h -N -p main -o '%N %t' 2>/dev/null | grep -c ' idle$' || true)
    [[ "$idle" == 2 ]] && { cat "$state/env"; return; }
    sleep 0.2
  done
  on_host head sinfo -N >&2 || true
  tail -n 20 "$state"/log/*.log >&2 || true
  die "the nodes did not come up (logs in $state/log)"
}

stop_pid() {  # stop_pid PIDFILE: TERM, then KILL after 10 s
  [[ -f "$1" ]] || return 0
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

stop() {
  for f in "$state"/run/slurmd-*.pid "$state/run/slurmctld.pid" "$state/run/munged.pid"; do stop_pid "$f"; done
  # Job processes the daemons started (slurmstepd and its tasks) run inside the hosts' namespaces.
  for h in "${hosts[@]}"; do
    [[ -e "$(netns "$h")" ]] && ip netns pids "$prefix-$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip link del "v$prefix-$h" 2>/dev/null || true
    [[ -e "$(netns "$h")" ]] && ip netns del "$prefix-$h"
    [[ -e "$state/uts/$h" ]] && { umount "$state/uts/$h" 2>/dev/null || true; rm -f "$state/uts/$h"; }
  done
  ip link del "$bridge" 2>/dev/null || true
  if grep -qF "$marker" /etc/hosts; then
    # /etc/hosts may be a bind mount: rewrite it in place rather than replace it.
    sed "/^$(printf '%s' "$marker" | sed 's/[]\/$*.^[]/\\&/g')\$/,/ end\$/d" /etc/hosts >"$state/hosts.new"
    cat "$state/hosts.new" >/etc/hosts && rm -f "$state/hosts.new"
  fi
}

case "$action" in
  start) start ;;
  stop) stop ;;
  run) on_host head "$@" ;;
  *) die "unknown action $action (start, stop or run)" ;;
esac
