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

# The guest architecture: every script takes --arch (default x86_64) and calls set_arch,
# which sets:
#   ARCH          x86_64 | aarch64 (QEMU's and Rust's name)
#   DEB_ARCH      amd64 | arm64 (Debian's name)
#   RUST_TARGET   the musl target the init is built for
#   QEMU_SYSTEM   the qemu-system binary, and QEMU_PACKAGE its Debian package
#   CONSOLE_TTY   the serial console's tty (ttyS0: 8250 UART; ttyAMA0: the PL011 of -M virt)
#   KERNEL_CACHE  where qemu/fetch-kernel keeps this architecture's kernel
#                 (kernel/ for x86_64, as before; kernel-arm64/ for aarch64)
ARCH=x86_64
HOST_ARCH="$(uname -m)"
set_arch() {
    case "$1" in
        x86_64 | amd64)
            ARCH=x86_64 DEB_ARCH=amd64 RUST_TARGET=x86_64-unknown-linux-musl
            QEMU_SYSTEM=qemu-system-x86_64 QEMU_PACKAGE=qemu-system-x86 CONSOLE_TTY=ttyS0
            KERNEL_CACHE="$CACHE_ROOT/kernel"
            ;;
        aarch64 | arm64)
            ARCH=aarch64 DEB_ARCH=arm64 RUST_TARGET=aarch64-unknown-linux-musl
            QEMU_SYSTEM=qemu-system-aarch64 QEMU_PACKAGE=qemu-system-arm CONSOLE_TTY=ttyAMA0
            KERNEL_CACHE="$CACHE_ROOT/kernel-arm64"
            ;;
        *) die "unknown architecture '$1' (accepted: x86_64 or amd64, aarch64 or arm64)" ;;
    esac
}
set_arch x86_64
# A rustup install whose bin directory is not on PATH (non-login shells, CI).
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi
# The packages the demo and the QEMU tests need, and the command each one provides.
NEEDED_TOOLS=(
    "qemu-system-x86:qemu-system-x86_64"
    # The arm64 boots (qemu/run --arch aarch64) and the arm64 tests.
    "qemu-system-arm:qemu-system-aarch64"
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
    # The floor init of the boot benchmark (benches/boot/floor-init.c) and its module-set test.
    "musl-tools:musl-gcc"
    # Live media: ISO, FAT and exFAT images for the probe's fixtures and the live tests.
    "xorriso:xorriso"
    "dosfstools:mkfs.vfat"
    "exfatprogs:mkfs.exfat"
    # The live tests fill a FAT stick without mounting it (the host may lack vfat), and an
    # exFAT stick through FUSE (the host may lack exfat).
    "mtools:mcopy"
    "exfat-fuse:mount.exfat-fuse"
    # dm-verity test images (veritysetup format).
    "cryptsetup-bin:veritysetup"
    # The Debian package's build and check (tests/qemu/package.rs, debian/build-deb).
    "debhelper:dh"
    "scdoc:scdoc"
    "lintian:lintian"
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

# Prints the Rust target triple the init is built for: $RUST_TARGET (musl) when rustup has (or
# can get) it; for x86_64 without it, the host's gnu target with a static C runtime.
init_target() {
    local libdir
    if libdir="$(rustc --print target-libdir --target "$RUST_TARGET" 2>/dev/null)" &&
        [[ -d "$libdir" ]]; then
        echo "$RUST_TARGET"
        return
    fi
    if command -v rustup >/dev/null && rustup target add "$RUST_TARGET" >&2; then
        echo "$RUST_TARGET"
        return
    fi
    [[ "$ARCH" == x86_64 ]] || die "the Rust target $RUST_TARGET is missing and rustup cannot add it (rustup target add $RUST_TARGET)"
    log "warning: no musl target; building for x86_64-unknown-linux-gnu with +crt-static"
    echo x86_64-unknown-linux-gnu
}

# The init's standard library is built from source (`-Zbuild-std`, rust-src) without std's
# `backtrace` feature: std's prebuilt copy links its backtrace symbolizer (gimli, addr2line,
# miniz_oxide; about 215 KiB) through the default panic hook whatever the program does. It is
# built with `panic_abort` and keeps the panic hook (the one that routes a panic in PID 1 to the
# failure handler): no `panic_immediate_abort`. `-Zbuild-std` is unstable: RUSTC_BOOTSTRAP=1
# lets the stable toolchain take it (the same rustc, with its own std source). See
# docs/benchmarks.md, "Binary size".
INIT_BUILD_STD=(-Zbuild-std=std,panic_abort "-Zbuild-std-features=optimize_for_size")

# The library directory of the Rust source (rust-src) of the toolchain cargo uses; adds the
# component with rustup when it is missing, and fails naming what is missing otherwise (no
# fallback to the prebuilt std: the init would silently grow by ~250 KiB).
ensure_rust_src() {
    local sysroot src
    sysroot="$(rustc --print sysroot)" || die "rustc --print sysroot failed"
    src="$sysroot/lib/rustlib/src/rust/library"
    if [[ ! -f "$src/std/Cargo.toml" ]] && command -v rustup >/dev/null; then
        rustup component add rust-src >&2 || die "rustup component add rust-src failed: the init's std is built from the Rust source (-Zbuild-std)"
    fi
    [[ -f "$src/std/Cargo.toml" ]] ||
        die "the Rust standard library's source is missing ($src/std/Cargo.toml): the init is built with -Zbuild-std; install it with 'rustup component add rust-src' (or a toolchain that ships it)"
    echo "$src"
}

# The cargo build of the release init for target $1 (the arguments after the target are added):
# std from source, as build_init builds it. For other tools that build it the same way, e.g.
# `init_cargo x86_64-unknown-linux-musl bloat --crates` (cargo-bloat).
# The rustflags (added to .cargo/config.toml's for the target; $RUSTFLAGS, which would replace
# them, is folded in):
#   -C force-unwind-tables=no   no .eh_frame for Rust code (~100 KiB): with panic=abort nothing
#                               unwinds, and the panic hook prints no backtrace
#   --cfg ovl_no_unwinder       (musl) no C unwinder linked (~60 KiB; src/sys/nounwind.rs)
#   --remap-path-prefix         std's and the crates' source paths in panic locations as
#                               /rustc/VERSION/library/... and /cargo/..., not this machine's
#   -Zfmt-debug=shallow         a derived Debug prints the type or variant name only (8 KiB):
#                               messages print values with Display; `{:?}` in them is kept for
#                               strings, paths and durations, whose Debug is written by hand
#                               (docs/benchmarks.md, "Size")
init_cargo() {
    local target="$1" subcommand="$2"
    shift 2
    local src version flags=() flag toml=""
    # (Explicit returns: a caller's `||` turns errexit off in here.)
    src="$(ensure_rust_src)" || return
    version="$(rustc --version | cut -d' ' -f2)" || return
    read -ra flags <<<"${RUSTFLAGS:-}"
    # glibc's static libraries bring their own unwinder (libgcc_eh): the stubs are musl's only.
    if [[ "$target" == *gnu ]]; then
        flags+=(-C target-feature=+crt-static)
    else
        flags+=(--cfg ovl_no_unwinder)
    fi
    flags+=(-C force-unwind-tables=no -Zfmt-debug=shallow
        "--remap-path-prefix=${src%/library}=/rustc/$version"
        "--remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}/registry/src=/cargo")
    for flag in "${flags[@]}"; do
        toml+="${toml:+, }\"$flag\""
    done
    env -u RUSTFLAGS RUSTC_BOOTSTRAP=1 cargo "$subcommand" --release \
        --manifest-path "$REPO_DIR/Cargo.toml" --target "$target" --no-default-features \
        --bin overlay-init "${INIT_BUILD_STD[@]}" --config "target.$target.rustflags = [$toml]" "$@"
}

# Builds the release init for $ARCH and prints the path of the static binary. A foreign
# target links with rust-lld (shipped with rustup; set in .cargo/config.toml): no cross gcc.
build_init() {
    need_cmd cargo "install Rust from https://rustup.rs"
    local target
    target="$(init_target)"
    ensure_rust_src >/dev/null
    init_cargo "$target" build --quiet >&2 ||
        die "the release init did not build for $target (cargo -Zbuild-std, see above)"
    local dir="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
    echo "$dir/$target/release/overlay-init"
}

# Prints the path of a static busybox for $ARCH: the host's (busybox-static) for the host's
# architecture; for another one, Debian's busybox-static:$DEB_ARCH fetched with apt-get download
# and extracted with dpkg -x into $CACHE_ROOT/busybox-$DEB_ARCH (never installed over the host's).
busybox_for_arch() {
    if [[ "$ARCH" == "$HOST_ARCH" ]]; then
        busybox_path
        return
    fi
    local cache="$CACHE_ROOT/busybox-$DEB_ARCH" bb
    bb="$cache/root/bin/busybox"
    if [[ -x "$bb" ]]; then
        echo "$bb"
        return
    fi
    mkdir -p "$cache" || die "cannot create the cache $cache (run as root or set OVERLAY_INIT_CACHE)"
    # Concurrent callers take turns; the second finds the first one's busybox.
    exec 8>"$cache/.lock"
    flock 8
    if [[ -x "$bb" ]]; then
        echo "$bb"
        return
    fi
    add_foreign_arch
    (cd "$cache" && apt_download "busybox-static:$DEB_ARCH")
    local deb
    deb="$(ls -t "$cache"/busybox-static_*_"$DEB_ARCH".deb | head -n1)"
    rm -rf "$cache/root.new"
    dpkg -x "$deb" "$cache/root.new"
    rm -rf "$cache/root"
    mv "$cache/root.new" "$cache/root"
    [[ -x "$bb" ]] || die "no bin/busybox in $deb"
    echo "$bb"
}

# Lets apt-get download packages of $DEB_ARCH (dpkg --add-architecture, then apt-get update).
add_foreign_arch() {
    [[ "$DEB_ARCH" == "$(dpkg --print-architecture)" ]] && return 0
    # No grep -q on a pipe: under pipefail, dpkg's SIGPIPE would read as "not added".
    [[ " $(dpkg --print-foreign-architectures | tr '\n' ' ') " == *" $DEB_ARCH "* ]] && return 0
    [[ "$(id -u)" == 0 ]] || die "Debian packages for $DEB_ARCH are not available; run as root (dpkg --add-architecture $DEB_ARCH && apt-get update)"
    log "adding the $DEB_ARCH architecture to dpkg and updating the package lists"
    dpkg --add-architecture "$DEB_ARCH"
    apt-get update -qq >&2
}

# apt-get download PACKAGE into the current directory, with one apt-get update on failure.
apt_download() {
    if ! apt-get download -qq "$1" >&2 2>/dev/null; then
        [[ "$(id -u)" == 0 ]] || die "apt-get download $1 failed; run 'apt-get update' as root and retry"
        log "apt-get download $1 failed; running apt-get update once"
        apt-get update -qq >&2
        apt-get download -qq "$1" >&2 || die "apt-get download $1 failed"
    fi
}

# Where qemu/demo builds and qemu/run finds the demo of $ARCH (unless OVERLAY_INIT_DEMO says).
default_demo_dir() {
    if [[ "$ARCH" == x86_64 ]]; then
        echo "$REPO_DIR/target/demo"
    else
        echo "$REPO_DIR/target/demo-$ARCH"
    fi
}

# Prints two lines: the vmlinuz path and the module tree path of the cached kernel.
kernel_paths() {
    "$QEMU_DIR/fetch-kernel" --arch "$ARCH"
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
    "$QEMU_DIR/build-demo" --arch "$ARCH" --add "$outdir/overlay-init:/sbin/overlay-init" "$outdir"
}

# One line saying how a guest booted by qemu/run ended, for every exit status qemu/run has
# (and any other), so a script that boots a guest never ends without saying why.
describe_guest_end() {
    case "$1" in
        0) echo "the guest powered off" ;;
        1) echo "the guest kernel panicked (see above)" ;;
        3) echo "the guest rebooted before the demo root came up (see above)" ;;
        124) echo "timeout: the guest did not finish in time" ;;
        2) echo "QEMU ended without the guest powering off or rebooting (see the line above)" ;;
        *) echo "qemu/run failed with status $1 (see above)" ;;
    esac
}
