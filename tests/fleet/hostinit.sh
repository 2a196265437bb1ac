#!/bin/sh
# PID 1 of one fleet host, before systemd. fleet.py starts it as
#   nsenter --net=/run/netns/NS -- unshare --pid --fork --mount --uts --ipc \
#       --cgroup --mount-proc --propagation private \
#       hostinit.sh HOSTDIR NAME UNITDIR FLEETDIR USER,USER,...
# after moving itself into its own cgroup folders (the namespace's root).
# It gives the host its own /etc (an overlay on the machine's), /home, /srv,
# /root and /var/log (binds of HOSTDIR), private /run /tmp /var/tmp
# /var/lib/systemd and /dev, a fresh read-only sysfs, its cgroup mounts, marks
# the service users as lingering, hides FLEETDIR (other hosts' files, the
# controller's secrets), then execs systemd with the minimal unit set of
# UNITDIR. It writes nothing outside HOSTDIR and the new tmpfs mounts.
set -eu
H=$1
NAME=$2
UNITS=$3
FLEETDIR=$4
USERS=$5

mount --make-rprivate /
hostname "$NAME"
: >"$H/console.log"

# the host's files: /etc as an overlay on the machine's, the rest binds
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$H/etc.upper,workdir=$H/etc.work" /etc
for d in home srv root var/log; do
    mount --bind "$H/$d" "/$d"
done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /var/lib/systemd
mkdir -p /run/fleet /var/lib/systemd/linger
cp -r "$UNITS" /run/fleet/units
if [ "$USERS" != - ]; then
    for u in $(echo "$USERS" | tr , ' '); do
        : >"/var/lib/systemd/linger/$u"
    done
fi

# /dev: a private tmpfs with the few nodes a host needs (the machine's /dev is
# never written: journald's /dev/log link lands here)
mount -t tmpfs -o mode=0755,nosuid tmpfs /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8
mknod -m 666 /dev/urandom c 1 9
mknod -m 666 /dev/tty c 5 0
mkdir -m 755 /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
touch /dev/console
mount --bind "$H/console.log" /dev/console

# kernel interfaces: /proc/sys read-only, a fresh read-only sysfs (this
# network namespace's devices), cgroup2 + name=systemd for the namespace
mount --bind /proc/sys /proc/sys
mount -o remount,ro,bind /proc/sys
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs /sys/fs/cgroup
mkdir /sys/fs/cgroup/unified /sys/fs/cgroup/systemd
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified
mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup /sys/fs/cgroup/systemd
mount -o remount,ro,bind /sys/fs/cgroup

# the fleet's folder is the controller's: no host sees it (nor the other hosts' files in it)
mount -t tmpfs -o mode=0700,size=64k tmpfs "$FLEETDIR"

exec env -i container=vrfleet SYSTEMD_UNIT_PATH=/run/fleet/units /lib/systemd/systemd --system \
    --log-target=console --show-status=0 </dev/console >/dev/console 2>&1
