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

/// The time since boot: `CLOCK_BOOTTIME`, the clock `/proc/uptime` shows (there in 10 ms
/// steps), read with one system call (a vDSO call where there is one) instead of opening,
/// reading and parsing a file. libc's `clock_gettime`, which std's `Instant` links already
/// (rustix's would add its own vDSO parser, 4 KiB).
pub fn uptime() -> Option<std::time::Duration> {
    // SAFETY: timespec is plain integers, for which all zeroes is a valid value.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return None;
    }
    Some(std::time::Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

/// This process's peak resident memory, `N kB`: `getrusage(RUSAGE_SELF)`'s `ru_maxrss`, the
/// figure `/proc/self/status` shows as `VmHWM` when the kernel starts the init (`/init` of
/// the initramfs, `init=`), without having the kernel generate that file and parsing it. Both
/// come from the memory map's high-water mark; `ru_maxrss` also counts the peak of the
/// process this one was exec'd from, and PID 1 is exec'd from a kernel thread, which has no
/// memory map. (Exec'd by a shell script `/init`, the figure would include the shell's peak.)
pub fn vm_hwm() -> Option<String> {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF needs nothing else.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    Some(format!("{} kB", usage.ru_maxrss))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `VmHWM` of /proc/self/status, in kB.
    fn status_vm_hwm() -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap();
        line.trim().strip_suffix(" kB").unwrap().parse().unwrap()
    }

    #[test]
    fn peak_memory_is_in_kb_and_at_least_vmhwm() {
        // Equal to VmHWM only in a process exec'd from one without a memory map (PID 1);
        // the test binary's also counts cargo's peak (at its exec). Never below it, in kB.
        let before = status_vm_hwm();
        let ours = vm_hwm().unwrap();
        let kb: u64 = ours.strip_suffix(" kB").unwrap().parse().unwrap();
        assert!(before <= kb, "VmHWM {before} kB <= {ours}");
    }

    #[test]
    fn uptime_is_the_clock_proc_uptime_shows() {
        let proc_uptime = || {
            let text = fs::read_to_string("/proc/uptime").unwrap();
            crate::decimal::parse_secs(text.split_whitespace().next().unwrap()).unwrap()
        };
        let before = proc_uptime();
        let ours = uptime().unwrap();
        let after = proc_uptime();
        // /proc/uptime truncates to 10 ms.
        assert!(before <= ours, "{before:?} <= {ours:?}");
        assert!(
            ours < after + std::time::Duration::from_millis(10),
            "{ours:?} < {after:?} + 10 ms"
        );
    }
}
