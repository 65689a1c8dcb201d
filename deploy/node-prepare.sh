#!/usr/bin/env bash
# Prepare a raykv replica node before `ray start`: its data disk and its stable identity.
#
# Run by every worker start command of cluster.yaml (and deploy/cluster-onprem.yaml), so it also
# runs when the autoscaler restarts Ray on a rebooted node without re-running the setup commands.
# Idempotent: a second run changes nothing and prints the same identity.
#
#   1. The data disk is mounted at $RAYKV_MOUNT (default /mnt/raykv):
#      - already mounted: nothing to do;
#      - RAYKV_DEVICE=auto (default): the EC2 instance-store NVMe (model "Amazon EC2 NVMe Instance
#        Storage") is formatted ext4 *only if it holds no file system* (a blank disk: first boot, or
#        after a stop/start, which erases instance storage), then mounted with noatime, and an fstab
#        line (nofail) remounts it after a reboot (instance storage survives reboots);
#      - RAYKV_DEVICE=/dev/...: the same with that device;
#      - RAYKV_DEVICE=none: never format or mount (on-prem: the administrator mounts the disk);
#      - not mounted in the end: fail, unless RAYKV_ALLOW_UNMOUNTED=1 (tests, development), so
#        replicas never write to the root disk by mistake.
#   2. $RAYKV_MOUNT/data exists and belongs to the login user.
#   3. $RAYKV_MOUNT/host-id holds this node's raykv identity, created once per disk:
#      "<short hostname>-<8 random hex digits>". It is the value of the `raykv-host` node label,
#      which names the replica data a node holds. Because it lives on the data disk, a blank disk
#      (a replaced instance, even one that got the old private IP and hostname back) gets a new
#      identity, so no replica of the old disk is ever restarted on empty data (a replica that
#      forgot its Raft votes and log would break Raft's safety).
#   4. TCP's retransmission backoff is capped (deploy/tcp-backoff.sh), so a replica healed from a
#      network cut hears its peers within a second, not up to two minutes later.
#
# Prints the identity on stdout. Start commands use:
#   bash ~/raykv/deploy/node-prepare.sh && ray start ... --labels=raykv-host=$(cat /mnt/raykv/host-id)
set -euo pipefail

MOUNT="${RAYKV_MOUNT:-/mnt/raykv}"
DEVICE="${RAYKV_DEVICE:-auto}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

fail() { echo "node-prepare: $*" >&2; exit 1; }

instance_store_device() {
    # The first NVMe instance-store disk of an EC2 Nitro instance (the root EBS volume reports
    # the model "Amazon Elastic Block Store").
    lsblk -dno NAME,MODEL 2>/dev/null | awk '/Amazon EC2 NVMe Instance Storage/ {print "/dev/" $1; exit}'
}

mount_data_disk() {
    local dev="$DEVICE"
    if [ "$dev" = none ]; then return 0; fi
    if [ "$dev" = auto ]; then dev="$(instance_store_device)"; fi
    if [ -z "$dev" ]; then return 0; fi
    [ -b "$dev" ] || fail "$dev is not a block device"
    if ! $SUDO blkid "$dev" >/dev/null 2>&1; then
        echo "node-prepare: formatting blank disk $dev (ext4)" >&2
        $SUDO mkfs.ext4 -q -L raykv -E nodiscard "$dev"
    fi
    $SUDO mkdir -p "$MOUNT"
    $SUDO mount -o noatime "$dev" "$MOUNT"
    local uuid
    uuid="$($SUDO blkid -s UUID -o value "$dev")"
    if ! grep -q "UUID=$uuid " /etc/fstab; then
        echo "UUID=$uuid $MOUNT ext4 noatime,nofail 0 2" | $SUDO tee -a /etc/fstab >/dev/null
    fi
}

if ! mountpoint -q "$MOUNT"; then
    mount_data_disk
fi
if ! mountpoint -q "$MOUNT"; then
    [ "${RAYKV_ALLOW_UNMOUNTED:-0}" = 1 ] || fail "no disk is mounted at $MOUNT (mount the node's NVMe there, set RAYKV_DEVICE=/dev/..., or RAYKV_ALLOW_UNMOUNTED=1 for a test)"
    mkdir -p "$MOUNT" 2>/dev/null || $SUDO mkdir -p "$MOUNT"
fi

if [ ! -w "$MOUNT" ]; then $SUDO chown "$(id -u):$(id -g)" "$MOUNT"; fi
mkdir -p "$MOUNT/data"

if [ ! -s "$MOUNT/host-id" ]; then
    name="$(hostname -s | tr -c 'A-Za-z0-9\n' '-' | cut -c1-40 | sed 's/^-*//; s/-*$//')"
    suffix="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
    echo "${name:-host}-${suffix}" > "$MOUNT/host-id.tmp"
    sync "$MOUNT/host-id.tmp" 2>/dev/null || sync
    mv "$MOUNT/host-id.tmp" "$MOUNT/host-id"
fi
bash "$(dirname "$0")/tcp-backoff.sh"
cat "$MOUNT/host-id"
