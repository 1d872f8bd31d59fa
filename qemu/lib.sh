# Shared helpers for the scripts in qemu/. Source it; do not run it.
# shellcheck shell=bash

set -euo pipefail

QEMU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$QEMU_DIR/.." && pwd)"
# Every cache lives under one root: $OVERLAY_INIT_CACHE (default /var/cache/overlay-init).
#   kernel/          Debian's cloud kernel (qemu/fetch-kernel)
#   router-kernel/   the router-mode kernel (qemu/build-router-kernel)
CACHE_ROOT="${OVERLAY_INIT_CACHE:-/var/cache/overlay-init}"
KERNEL_CACHE="$CACHE_ROOT/kernel"
# A rustup install whose bin directory is not on PATH (non-login shells, CI).
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi
# The packages the demo and the QEMU tests need, and the command each one provides.
NEEDED_TOOLS=(
    "qemu-system-x86:qemu-system-x86_64"
    "squashfs-tools:mksquashfs"
    "erofs-utils:mkfs.erofs"
    "busybox-static:busybox"
    "e2fsprogs:mkfs.ext4"
    "e2fsprogs:debugfs"
    "gdisk:sgdisk"
    "fdisk:sfdisk"
    "cpio:cpio"
    # First-boot formats and flash uppers (issue 14): f2fs, UBI/UBIFS and JFFS2 images, and
    # vfat and LUKS disks that must never be formatted.
    "f2fs-tools:mkfs.f2fs"
    "mtd-utils:ubinize"
    "mtd-utils:mkfs.ubifs"
    "mtd-utils:mkfs.jffs2"
    "dosfstools:mkfs.vfat"
    "cryptsetup-bin:cryptsetup"
    # The builder's tests compress real modules with these.
    "zstd:zstd"
    "xz-utils:xz"
)

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit "${DIE_STATUS:-1}"; }

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is missing${2:+ (Debian package: $2)}"
}

# The Debian packages whose commands are not on PATH.
missing_packages() {
    local entry pkg cmd missing=()
    for entry in "${NEEDED_TOOLS[@]}"; do
        pkg="${entry%%:*}" cmd="${entry#*:}"
        if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
            missing+=("$pkg")
        fi
    done
    # busybox must be the static build: it runs inside the guest.
    if command -v busybox >/dev/null 2>&1 && ! busybox_is_static && [[ " ${missing[*]} " != *" busybox-static "* ]]; then
        missing+=("busybox-static")
    fi
    echo "${missing[@]}"
}

busybox_path() { command -v busybox; }

busybox_is_static() {
    local bb
    bb="$(busybox_path)" || return 1
    # ldd fails on a static binary ("not a dynamic executable").
    ! ldd "$bb" >/dev/null 2>&1
}

# Installs the missing Debian packages (needs root and apt-get).
install_missing_packages() {
    local missing
    missing="$(missing_packages)"
    [[ -z "$missing" ]] && return 0
    command -v apt-get >/dev/null || die "missing packages: $missing, and apt-get is not available to install them"
    [[ "$(id -u)" == 0 ]] || die "missing packages: $missing; run as root (or: sudo apt-get install $missing)"
    log "installing: $missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
}

# Prints the Rust target triple the init is built for: musl when rustup has (or can get) it,
# otherwise the host's gnu target with a static C runtime.
init_target() {
    if rustc --print target-libdir --target x86_64-unknown-linux-musl >/dev/null 2>&1 &&
        [[ -d "$(rustc --print target-libdir --target x86_64-unknown-linux-musl)" ]]; then
        echo x86_64-unknown-linux-musl
        return
    fi
    if command -v rustup >/dev/null && rustup target add x86_64-unknown-linux-musl >&2; then
        echo x86_64-unknown-linux-musl
        return
    fi
    log "warning: no musl target; building for x86_64-unknown-linux-gnu with +crt-static"
    echo x86_64-unknown-linux-gnu
}

# Builds the release init and prints the path of the static binary.
build_init() {
    need_cmd cargo "install Rust from https://rustup.rs"
    local target
    target="$(init_target)"
    if [[ "$target" == *gnu ]]; then
        RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
            cargo build --quiet --release --manifest-path "$REPO_DIR/Cargo.toml" \
            --target "$target" --bin overlay-init >&2
    else
        cargo build --quiet --release --manifest-path "$REPO_DIR/Cargo.toml" \
            --target "$target" --bin overlay-init >&2
    fi
    local dir="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
    echo "$dir/$target/release/overlay-init"
}

# Prints two lines: the vmlinuz path and the module tree path of the cached kernel.
kernel_paths() {
    "$QEMU_DIR/fetch-kernel"
}

# A digest of files and strings, used as a cache key.
digest() {
    local item
    for item in "$@"; do
        if [[ -f "$item" ]]; then
            sha256sum <"$item"
        else
            printf '%s\n' "$item"
        fi
    done | sha256sum | cut -d' ' -f1
}

# Builds everything a boot needs into OUTDIR:
#   OUTDIR/overlay-init        the static init
#   OUTDIR/initramfs.cpio.gz   initramfs/build output (init + modules [+ extra files])
#   OUTDIR/root.{sqsh,erofs,ext4}, OUTDIR/upper.ext4, OUTDIR/root/   (qemu/build-demo)
# Extra arguments are passed to initramfs/build (e.g. --file SRC:DEST).
build_boot_artifacts() {
    local outdir="$1" init moddir
    shift
    mkdir -p "$outdir"
    moddir="$(kernel_paths | sed -n 2p)"
    [[ -n "$moddir" ]] || die "no kernel module tree (qemu/fetch-kernel failed)"
    init="$(build_init)"
    [[ -x "$init" ]] || die "the init was not built at $init"
    install -m 0755 "$init" "$outdir/overlay-init.tmp"
    mv "$outdir/overlay-init.tmp" "$outdir/overlay-init"
    [[ -x "$REPO_DIR/initramfs/build" ]] || die "initramfs/build is missing or not executable"
    "$REPO_DIR/initramfs/build" --init "$outdir/overlay-init" --modules "$moddir" "$@" \
        -o "$outdir/initramfs.cpio.gz.tmp" >&2
    mv "$outdir/initramfs.cpio.gz.tmp" "$outdir/initramfs.cpio.gz"
    # The init also goes into the root, for router mode (init=/sbin/overlay-init).
    "$QEMU_DIR/build-demo" --add "$outdir/overlay-init:/sbin/overlay-init" "$outdir"
}
