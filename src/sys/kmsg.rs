//! Kernel facts PID 1 reads or tunes around logging: the `/dev/kmsg` rate limit,
//! the uptime, and this process's peak memory.

use std::fs;

const DEVKMSG: &str = "/proc/sys/kernel/printk_devkmsg";

/// Let PID 1 write more than ten lines to `/dev/kmsg` in a burst (the kernel
/// rate-limits userspace writes by default). Returns the old setting.
pub fn lift_ratelimit() -> Option<String> {
    let old = fs::read_to_string(DEVKMSG).ok()?.trim().to_string();
    // The kernel takes a value only with its trailing newline (EINVAL otherwise).
    if old == "ratelimit" && fs::write(DEVKMSG, "on\n").is_ok() {
        return Some(old);
    }
    None
}

/// Put the rate limit back before the real init takes over.
pub fn restore_ratelimit(old: Option<String>) {
    if let Some(old) = old {
        let _ = fs::write(DEVKMSG, format!("{old}\n"));
    }
}

/// The time since boot, from `/proc/uptime`.
pub fn uptime() -> Option<std::time::Duration> {
    crate::decimal::parse_secs(
        fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?,
    )
}

/// This process's peak resident memory (`VmHWM` in `/proc/self/status`).
pub fn vm_hwm() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().to_string())
}
