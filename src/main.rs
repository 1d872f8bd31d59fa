//! Multicall entry: as PID 1 it boots; otherwise it is the command-line tool.

#![deny(unsafe_code)]

fn main() {
    if rustix::process::getpid().is_init() {
        // Detected, not configured: an initramfs at `/` means initramfs mode; a
        // root the kernel mounted itself (init=/sbin/overlay-init) is router mode.
        overlay_init::boot::run_pid1(overlay_init::boot::RootMode::detect());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(overlay_init::cli::run(&args));
}
