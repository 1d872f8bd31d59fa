//! Multicall entry: as PID 1 it boots; otherwise it is the command-line tool.

fn main() {
    if rustix::process::getpid().is_init() {
        overlay_init::boot::run_pid1();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(overlay_init::cli::run(&args));
}
