#!/usr/bin/env bash
# A one-node Slurm cluster (Debian slurm-wlm + munge) on 127.0.0.1 for the interop tests. Idempotent: installs
# the packages once, writes the configuration, and starts munged, slurmctld and slurmd only when not running.
# Jobs run as root on this host, so pilots use the project's own virtualenv.
set -euo pipefail
D=${SLURM_STATE_DIR:-/var/lib/junodcs-slurm}
HOST=$(hostname)
log() { printf '== slurm: %s\n' "$*"; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
mkdir -p "$D/state" "$D/spool" "$D/log" /etc/slurm /run/munge
chown munge:munge /run/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
if ! pgrep -x munged >/dev/null; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
fi
cat > /etc/slurm/slurm.conf.new <<CONF
ClusterName=junodcs
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
ReturnToService=2
MinJobAge=600
SchedulerType=sched/backfill
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
if ! cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf 2>/dev/null; then
  mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
  if pgrep -x slurmctld >/dev/null; then scontrol reconfigure || true; fi
else
  rm -f /etc/slurm/slurm.conf.new
fi
pgrep -x slurmctld >/dev/null || { log "starting slurmctld"; slurmctld -i; }
pgrep -x slurmd >/dev/null || { log "starting slurmd"; slurmd; }
for _ in $(seq 1 30); do
  state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
  case "$state" in idle*|mixed*|allocated*) break ;; esac
  sleep 0.5
done
state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
case "$state" in
  idle*|mixed*|allocated*) log "cluster up: node $HOST $state" ;;
  *) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true; sleep 1
     state=$(sinfo -h -o %T | head -1); log "node $HOST: $state" ;;
esac
