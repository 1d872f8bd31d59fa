#!/bin/bash
# Upgrade benchmark (not a test). Needs root, util-linux, mksquashfs, mkfs.erofs, mkfs.ext4.
#
# 1. Lower identity: sys::lower_identity::identify on ~100 MB squashfs, erofs and ext4
#    images (1,000 files of 100 KiB of random data, 20 directories), read through a loop
#    device while the image is mounted on it, as at boot. Before each run the loop
#    device's buffers are flushed (blockdev --flushbufs) and the backing file dropped from
#    the page cache (dd iflag=nocache). Buffers the mounted filesystem holds (ext4 keeps
#    its superblock and group descriptors) stay cached, as they are at boot.
# 2. Reset with a keep-list: reset::apply_pending_keeping on a loop-mounted ext4 upper
#    holding 100,000 small files plus 100 kept files of 1 MiB, keep-list of 100 lines;
#    the upper is remounted before each run (cold dentry/inode caches).
# Runs are interleaved; each figure is the median of RUNS runs.
#
# Usage: benches/upgrade.sh [RUNS]      (default 5) -> benches/results/upgrade.md
set -euo pipefail
RUNS=${1:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

if [ -z "${UPGRADE_BENCH_IN_NS:-}" ]; then
    (cd "$REPO" && cargo build --release --example upgrade_bench --example reset_bench >&2)
    T="${CARGO_TARGET_DIR:-$REPO/target}/release/examples"
    export UPGRADE_BENCH_IN_NS=1 UPGRADE_BIN="$T/upgrade_bench" RESET_BIN="$T/reset_bench"
    exec unshare --mount --propagation private -- "$0" "$@"
fi

WORK=$(mktemp -d /tmp/upgrade-bench.XXXXXX)
LOOPS=()
cleanup() {
    for m in "$WORK"/mnt-* "$WORK/overlay" "$WORK/lower"; do umount -l "$m" 2>/dev/null || true; done
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m/1e6}'; }

# ---- images of ~100 MB
mkdir -p "$WORK/tree/etc"
echo 'VERSION_ID=1' > "$WORK/tree/etc/os-release"
for d in $(seq 0 19); do
    mkdir -p "$WORK/tree/d$d"
    for f in $(seq 0 49); do head -c 102400 /dev/urandom > "$WORK/tree/d$d/f$f"; done
done
mksquashfs "$WORK/tree" "$WORK/img.squashfs" -quiet -noappend -no-progress >/dev/null
mkfs.erofs --quiet "$WORK/img.erofs" "$WORK/tree"
mkfs.ext4 -q -F -d "$WORK/tree" "$WORK/img.ext4" 128M >/dev/null
declare -A DEV SIZE ID BYTES
for fs in squashfs erofs ext4; do
    DEV[$fs]=$(losetup --find --show --read-only "$WORK/img.$fs"); LOOPS+=("${DEV[$fs]}")
    mkdir -p "$WORK/mnt-$fs"; mount -t "$fs" -o ro "${DEV[$fs]}" "$WORK/mnt-$fs"
    SIZE[$fs]=$(stat -c %s "$WORK/img.$fs")
done

# ---- the upper: 100,000 files + 100 kept files of 1 MiB
mkdir -p "$WORK/lower-tree/etc" "$WORK/lower" "$WORK/overlay"
echo "NAME=factory" > "$WORK/lower-tree/etc/os-release"
mksquashfs "$WORK/lower-tree" "$WORK/lower.sqsh" -quiet -noappend -no-progress >/dev/null
mount -t squashfs -o loop,ro "$WORK/lower.sqsh" "$WORK/lower"
truncate -s 3G "$WORK/upper.ext4"
mkfs.ext4 -q -F -N 400000 "$WORK/upper.ext4"
mount -t ext4 -o loop "$WORK/upper.ext4" "$WORK/overlay"
remount_upper() { umount "$WORK/overlay"; mount -t ext4 -o loop "$WORK/upper.ext4" "$WORK/overlay"; }
fill_upper() {
    mkdir -p "$WORK/overlay/upper" "$WORK/overlay/work"
    "$RESET_BIN" fill "$WORK/overlay/upper" 100000
    "$UPGRADE_BIN" kept "$WORK/overlay/upper" 100 1048576 > "$WORK/keep"
    sync -f "$WORK/overlay"
    remount_upper
}

declare -A RESETK CARRY
for run in $(seq "$RUNS"); do
    for fs in squashfs erofs ext4; do
        blockdev --flushbufs "${DEV[$fs]}"
        dd if="$WORK/img.$fs" iflag=nocache count=0 status=none
        read -r ns bytes < <("$UPGRADE_BIN" identity "${DEV[$fs]}" "$WORK/mnt-$fs")
        ID[$fs]+="$ns "; BYTES[$fs]=$bytes
        echo "run $run $fs: identity ${ns}ns, $bytes bytes hashed" >&2
    done
    fill_upper
    read -r total carry carried < <("$UPGRADE_BIN" reset-keeping "$WORK/overlay" "$WORK/lower" "$WORK/keep")
    [ "$carried" = 100 ] || { echo "carried $carried of 100" >&2; exit 1; }
    RESETK[x]+="$total "; CARRY[x]+="$carry "
    echo "run $run: reset with keep-list ${total}ns, carry-kept ${carry}ns, $carried kept" >&2
    remount_upper
    "$RESET_BIN" wipe "$WORK/overlay" >/dev/null
    rm -rf "$WORK/overlay/upper" "$WORK/overlay/work"
done

OUT="$REPO/benches/results/upgrade.md"
{
    echo "# Upgrade benchmark"
    echo
    echo "\`benches/upgrade.sh $RUNS\` on $(uname -r), $(nproc) CPUs, $(date -u +%Y-%m-%d). Median of $RUNS interleaved runs, milliseconds."
    echo
    echo "## Lower identity (\`sys::lower_identity::identify\`, cold caches)"
    echo
    echo "| fs | image bytes | metadata bytes hashed | identity (ms) |"
    echo "|---|---:|---:|---:|"
    for fs in squashfs erofs ext4; do
        printf '| %s | %s | %s | %s |\n' "$fs" "${SIZE[$fs]}" "${BYTES[$fs]}" "$(tr ' ' '\n' <<<"${ID[$fs]}" | grep . | median)"
    done
    echo
    echo "## Reset with a keep-list (\`reset::apply_pending_keeping\`)"
    echo
    echo "100,000 files of 16 bytes in the upper, 100 kept files of 1 MiB, a keep-list of 100 lines."
    echo
    echo "| reset total (ms) | of which carry-kept (ms) |"
    echo "|---:|---:|"
    printf '| %s | %s |\n' "$(tr ' ' '\n' <<<"${RESETK[x]}" | grep . | median)" "$(tr ' ' '\n' <<<"${CARRY[x]}" | grep . | median)"
} > "$OUT"
cat "$OUT"
