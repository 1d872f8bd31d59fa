#!/bin/bash
# Factory-reset benchmark (not a test). Needs root, util-linux, mkfs.ext4, mksquashfs.
#
# Fills a loop-mounted ext4 upper with 1,000 / 10,000 / 100,000 files and measures
# the boot-path cost of a reset: from the start of reset::apply_pending to the
# overlay being mounted. Beside it: `rm -rf` of the same tree (what a naive reset
# costs at boot), and the background trash removal. Sizes are interleaved run by
# run; each number is the median of RUNS runs. The upper filesystem is unmounted
# and mounted again before each timed step, so its dentry/inode caches are cold
# as at boot (the loop's backing file may still be in the host page cache).
#
# Usage: benches/reset.sh [RUNS]        (default 5) -> benches/results/reset.md
set -euo pipefail
RUNS=${1:-5}
SIZES=(1000 10000 100000)
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

if [ -z "${RESET_BENCH_IN_NS:-}" ]; then
    (cd "$REPO" && cargo build --release --example reset_bench >&2)
    export RESET_BENCH_IN_NS=1 RESET_BENCH_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/examples/reset_bench"
    exec unshare --mount --propagation private -- "$0" "$@"
fi

BIN=$RESET_BENCH_BIN
WORK=$(mktemp -d /tmp/reset-bench.XXXXXX)
cleanup() {
    for m in "$WORK/merged" "$WORK/overlay" "$WORK/lower"; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/lower-tree/etc" "$WORK/lower" "$WORK/overlay" "$WORK/merged"
echo "NAME=factory" > "$WORK/lower-tree/etc/os-release"
mksquashfs "$WORK/lower-tree" "$WORK/lower.sqsh" -quiet -noappend -no-progress >/dev/null
mount -t squashfs -o loop,ro "$WORK/lower.sqsh" "$WORK/lower"
truncate -s 2G "$WORK/upper.ext4"
mkfs.ext4 -q -F -N 400000 "$WORK/upper.ext4"
mount -t ext4 -o loop "$WORK/upper.ext4" "$WORK/overlay"

remount_upper() { umount "$WORK/overlay"; mount -t ext4 -o loop "$WORK/upper.ext4" "$WORK/overlay"; }
fill_upper() { # N: a fresh upper/ with N files, on disk, caches cold
    mkdir -p "$WORK/overlay/upper" "$WORK/overlay/work"
    "$BIN" fill "$WORK/overlay/upper" "$1"
    sync -f "$WORK/overlay"
    remount_upper
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m/1e6}'; }

declare -A RESET MOUNTED RMRF WIPE
for run in $(seq "$RUNS"); do
    for n in "${SIZES[@]}"; do
        fill_upper "$n"
        read -r reset_ns mounted_ns < <("$BIN" reset "$WORK/overlay" "$WORK/lower" "$WORK/merged")
        RESET[$n]+="$reset_ns "; MOUNTED[$n]+="$mounted_ns "
        remount_upper
        read -r wipe_ns removed < <("$BIN" wipe "$WORK/overlay")
        WIPE[$n]+="$wipe_ns "

        fill_upper "$n"
        start=$(date +%s%N); rm -rf "$WORK/overlay/upper"; sync -f "$WORK/overlay"; end=$(date +%s%N)
        RMRF[$n]+="$((end - start)) "
        echo "run $run n=$n: reset ${reset_ns}ns, reset+mount ${mounted_ns}ns, wipe ${wipe_ns}ns ($removed entries), rm -rf+sync $((end - start))ns" >&2
    done
done

OUT="$REPO/benches/results/reset.md"
mkdir -p "$(dirname "$OUT")"
{
    echo "# Factory reset benchmark"
    echo
    echo "\`benches/reset.sh $RUNS\` on $(uname -r), $(nproc) CPUs, $(date -u +%Y-%m-%d). Loop-mounted ext4 upper"
    echo "(2 GiB sparse image on the host's /tmp), squashfs lower; files of 16 bytes, 1,000 per"
    echo "directory, names starting with a dot. Median of $RUNS interleaved runs, milliseconds."
    echo
    echo "| files | reset (apply_pending) | reset + overlay mount (boot path) | rm -rf + sync | trash removal (background) |"
    echo "|---:|---:|---:|---:|---:|"
    for n in "${SIZES[@]}"; do
        printf '| %s | %s | %s | %s | %s |\n' "$n" \
            "$(tr ' ' '\n' <<<"${RESET[$n]}" | grep . | median)" \
            "$(tr ' ' '\n' <<<"${MOUNTED[$n]}" | grep . | median)" \
            "$(tr ' ' '\n' <<<"${RMRF[$n]}" | grep . | median)" \
            "$(tr ' ' '\n' <<<"${WIPE[$n]}" | grep . | median)"
    done
    echo
    echo "Boot-path ratio 100,000 / 1,000 files: $(awk -v a="$(tr ' ' '\n' <<<"${MOUNTED[100000]}" | grep . | median)" -v b="$(tr ' ' '\n' <<<"${MOUNTED[1000]}" | grep . | median)" 'BEGIN {printf "%.2f", a/b}') (target: at most 1.5)."
} > "$OUT"
cat "$OUT"
