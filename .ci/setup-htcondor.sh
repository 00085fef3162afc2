#!/usr/bin/env bash
# A one-node HTCondor pool for the interop tests and bench: Debian trixie's `condor` (bookworm has none) in a
# debootstrap chroot, started on 127.0.0.1:9618, plus what junodcs pilots need inside it. Idempotent: the
# chroot is built once (~1 min) and cached under $HTCONDOR_ROOT; later runs only (re)mount and (re)start.
#
# Pilots run inside the chroot with the chroot's own Python (3.13) and Debian's python3-httpx/-yaml/-pydantic,
# with PYTHONPATH pointing at this checkout's src/ (bind-mounted read-only at /opt/junodcs/src): the pilot
# needs only the client side of junodcs, so no virtualenv has to match the chroot's Python.
# Jobs see the host's /srv/junodcs-htcondor at the same path (pilot work areas, logs, token files).
# The host talks to the pool with the `htcondor` bindings (module htcondor2) using $HTCONDOR_CONFIG_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
R=${HTCONDOR_ROOT:-/opt/junodcs-htcondor/trixie}
SHARED=${HTCONDOR_SHARED:-/srv/junodcs-htcondor}
HOSTCONF=${HTCONDOR_CONFIG_DIR:-/etc/junodcs/htcondor}
MIRROR=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
MIRROR=${MIRROR:-http://deb.debian.org/debian}
HOST=$(hostname)
log() { printf '== htcondor: %s\n' "$*"; }

if [ ! -x "$R/usr/sbin/condor_master" ] || [ ! -e "$R/.junodcs-ready" ]; then
  log "building the trixie chroot in $R (cached for later runs)"
  command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
  rm -rf "$R"; mkdir -p "$(dirname "$R")"
  debootstrap --variant=minbase trixie "$R" "$MIRROR" >/dev/null
  printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod +x "$R/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$R/etc/"
  mount -t proc proc "$R/proc"; mount --bind /dev "$R/dev"
  chroot "$R" bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends condor minicondor python3 python3-httpx python3-yaml python3-pydantic >/dev/null'
  mkdir -p "$R/run/condor"; chroot "$R" chown condor:condor /run/condor
  chroot "$R" id tester >/dev/null 2>&1 || chroot "$R" useradd -m tester
  touch "$R/.junodcs-ready"
fi

mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
mountpoint -q "$R/dev" || mount --bind /dev "$R/dev"
mkdir -p "$R/opt/junodcs/src" "$SHARED" "$R$SHARED" "$R/run/condor"
chmod 1777 "$SHARED"
# always this checkout's src/ (a cached chroot may still hold another checkout's)
while mountpoint -q "$R/opt/junodcs/src"; do umount "$R/opt/junodcs/src"; done
mount --bind "$REPO/src" "$R/opt/junodcs/src"; mount -o remount,bind,ro "$R/opt/junodcs/src"
mountpoint -q "$R$SHARED" || mount --bind "$SHARED" "$R$SHARED"
grep -q " $HOST\$" "$R/etc/hosts" 2>/dev/null || echo "127.0.0.1 $HOST" >> "$R/etc/hosts"
chroot "$R" chown condor:condor /run/condor

cat > "$R/etc/condor/condor_config.local" <<CONF
MOUNT_UNDER_SCRATCH =
ENABLE_IPV6 = False
NETWORK_INTERFACE = 127.0.0.1
SCHEDD_INTERVAL = 1
NEGOTIATOR_INTERVAL = 1
NEGOTIATOR_MIN_INTERVAL = 0
NEGOTIATOR_CYCLE_DELAY = 1
UPDATE_INTERVAL = 2
SCHEDD_MIN_INTERVAL = 0
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
NUM_CPUS = 2
CONF

if ! chroot "$R" condor_status -limit 1 >/dev/null 2>&1; then
  log "starting condor_master"
  chroot "$R" /usr/sbin/condor_master
  for _ in $(seq 1 60); do
    if chroot "$R" condor_status -af Name 2>/dev/null | grep -q slot; then break; fi
    sleep 1
  done
fi
chroot "$R" condor_status -af Name 2>/dev/null | grep -q slot || { log "no slot came up"; exit 1; }

mkdir -p "$HOSTCONF/tokens.d"; chmod 700 "$HOSTCONF/tokens.d"
if [ ! -s "$HOSTCONF/tokens.d/tester" ]; then
  chroot "$R" condor_token_create -identity "tester@$HOST" > "$HOSTCONF/tokens.d/tester"
  chmod 600 "$HOSTCONF/tokens.d/tester"
fi
cat > "$HOSTCONF/condor_config" <<CONF
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:9618
SCHEDD_HOST = $HOST
SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS, FS
SEC_TOKEN_DIRECTORY = $HOSTCONF/tokens.d
ENABLE_IPV6 = False
CONF
cat > "$HOSTCONF/env" <<CONF
HTCONDOR_ROOT=$R
HTCONDOR_SHARED=$SHARED
CONDOR_CONFIG=$HOSTCONF/condor_config
CONF
log "pool up: $(chroot "$R" condor_status -af Name | tr '\n' ' ')(chroot $R, shared $SHARED, client config $HOSTCONF)"
