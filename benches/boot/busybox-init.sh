#!/bin/busybox sh
# The baseline for qemu/bench-boot: a busybox-shell /init doing overlay-init's job the usual
# way, one process at a time (as OpenWrt's preinit, Alpine's init and hand-made overlay setups
# do): mount the API filesystems, insmod each module, poll for the disks, mount the lower
# read-only, the upper (tmpfs, or an ext4 device), the overlay, move the layers to /rom and
# /overlay, then switch_root to the real init.
#
# Equal work (qemu/bench-boot checks it after every boot): the same modules as overlay-init
# (the benchmark builds the index with exactly those), the same mount points (/rom, /overlay,
# /sysroot in the initramfs, as overlay-init stages them), flags and overlay options, and with a
# persistent upper the boot counter written durably (`sync -d`, an fdatasync).
#
# It reads the kernel command line itself (the kernel does not pass dotted names to init):
#   root=/dev/NAME        the lower (polled for)
#   rootfstype=TYPE       default squashfs (a script knows its image's type)
#   ovl.upper=/dev/NAME   an ext4 upper device; default: a tmpfs upper
#   init=PATH             the real init; default /sbin/init
# Modules: /lib/modules/overlay-init.index (the same file overlay-init reads), in its order,
# one `insmod` each.
#
# Timing marks go to /dev/kmsg as "bbinit: STEP (uptime U)": the benchmark takes the kernel's
# printk timestamp of each, the same clock it uses for overlay-init's log lines. The last one
# ("handover") also carries VmHWM of this shell (PID 1) just before switch_root.
#
# Applets run by name: Debian's busybox-static is built with the standalone shell, which
# runs /proc/self/exe for an applet, so the very first command names /bin/busybox.
set -f
export PATH=/bin

# The API filesystems move into the new root before switch_root: marks follow them.
api=""
mark() {
    read -r up _ <"$api/proc/uptime"
    echo "bbinit: $1 (uptime $up)${2:+ $2}" >"$api/dev/kmsg"
}

fail() {
    echo "bbinit: FAILED: $*" >/dev/console
    echo "bbinit: FAILED: $*" >/dev/kmsg 2>/dev/null
    exec /bin/busybox sh
}

# API filesystems (each mount is a fork + exec of busybox).
/bin/busybox mount -t proc -o nodev,noexec,nosuid proc /proc || fail "mount /proc"
mount -t sysfs -o nodev,noexec,nosuid sysfs /sys || fail "mount /sys"
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev || fail "mount /dev"
mkdir -p /run
mount -t tmpfs -o nodev,nosuid,mode=0755 tmpfs /run || fail "mount /run"
mark "api-mounts"

root="" rootfstype=squashfs upper="" init=/sbin/init
read -r cmdline </proc/cmdline
for word in $cmdline; do
    case "$word" in
        root=*) root=${word#root=} ;;
        rootfstype=*) rootfstype=${word#rootfstype=} ;;
        ovl.upper=*) upper=${word#ovl.upper=} ;;
        init=*) init=${word#init=} ;;
    esac
done
[ "$upper" = tmpfs ] && upper=""
[ -n "$root" ] || fail "root= is missing"

# Modules, one insmod each, in the index's (dependency) order.
while read -r name file _; do
    case "$name" in '#'* | '') continue ;; esac
    insmod "/lib/modules/$file" || echo "bbinit: insmod $name failed" >/dev/console
done </lib/modules/overlay-init.index
mark "modules"

# Wait for the disks the usual way: poll every 10 ms, give up after 30 s.
tries=0
while [ ! -b "$root" ] || { [ -n "$upper" ] && [ ! -b "$upper" ]; }; do
    tries=$((tries + 1))
    [ "$tries" -le 3000 ] || fail "timed out waiting for $root $upper"
    usleep 10000
done
mark "device-wait" "polls=$tries"

mkdir -p /rom /overlay /sysroot
mount -t "$rootfstype" -o ro,nodev "$root" /rom || fail "mount lower $root"
mark "lower"

if [ -n "$upper" ]; then
    mount -t ext4 -o nodev "$upper" /overlay || fail "mount upper $upper"
else
    mount -t tmpfs -o nodev,nosuid,mode=0755,size=50% tmpfs /overlay || fail "mount tmpfs upper"
fi
mkdir -p /overlay/upper /overlay/work
mark "upper"

if [ -n "$upper" ]; then
    # The boot counter, durably (overlay-init's record-boot does the same job).
    mkdir -p /overlay/.overlay-init
    echo attempts=1 >/overlay/.overlay-init/bootcount
    sync -d /overlay/.overlay-init/bootcount || fail "sync the boot counter"
    mark "record-boot"
fi

mount -t overlay -o lowerdir=/rom,upperdir=/overlay/upper,workdir=/overlay/work \
    overlay /sysroot || fail "mount overlay"
mark "overlay"

mkdir -p /sysroot/rom /sysroot/overlay
mount --move /rom /sysroot/rom || fail "move lower to /rom"
mount --move /overlay /sysroot/overlay || fail "move upper to /overlay"
[ -x "/sysroot$init" ] || fail "$init is not executable in the new root"
mark "move-layers"

hwm=""
while read -r key value unit; do
    [ "$key" = "VmHWM:" ] && hwm="VmHWM=$value$unit"
done </proc/self/status
# Move the API filesystems; the standalone shell runs applets via /proc/self/exe, so from
# here on busybox is named by its path.
for dir in run dev sys proc; do
    mkdir -p "/sysroot/$dir"
    /bin/busybox mount --move "/$dir" "/sysroot/$dir" || fail "move /$dir"
done
api=/sysroot
mark "handover" "$hwm"
exec /bin/busybox switch_root /sysroot "$init" "$@"
