//! QEMU boots: [`kernel`] and [`artifacts`] build or fetch what a boot needs, once per test
//! process ([`router_kernel`]: the small kernel with virtio_blk and squashfs built in);
//! [`boot`] is one headless boot through `qemu/run`, bounded by a hard timeout, with the serial
//! console captured; [`assert_marker`] prints the whole console when a marker is missing;
//! [`BusyboxInitramfs`] is a small shell initramfs, for tests that must not depend on the init.
//!
//! Guest markers: `/sbin/test-init` in the demo root prints `OVLTEST: pid=.. args=..`, runs
//! the command given after `--` on the kernel command line, then `OVLTEST: exit=N`.
//!
//! Architectures: every boot is x86_64 unless its [`BootSpec::arch`] says [`Arch::Aarch64`];
//! a test shared by both takes an `Arch` and has one `#[test]` per architecture
//! ([`kernel_for`], [`artifacts_for`] give that architecture's kernel and artifacts).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::base::*;

/// A boot of the demo root takes a few seconds under TCG; this bounds a stuck one.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The virtio block stack of Debian's kernel, in load order (all are modules there).
pub const VIRTIO_BLK_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

/// The guest architecture: the init, the initramfs, the demo root, the kernel and QEMU all
/// follow it (`qemu/* --arch NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    #[default]
    X86_64,
    /// `qemu-system-aarch64 -machine virt -cpu cortex-a57`, Debian's arm64 cloud kernel.
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The name the scripts take after `--arch`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Artifacts

#[derive(Debug, Clone)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `lib/modules/VERSION` of the extracted package (uncompressed `.ko`, no modules.dep).
    pub modules: PathBuf,
}

/// The cached Debian kernel (`qemu/fetch-kernel`), fetched at most once per process.
pub fn kernel() -> &'static Kernel {
    kernel_for(Arch::X86_64)
}

/// The cached Debian kernel of `arch` (`qemu/fetch-kernel --arch`), fetched at most once per
/// process and architecture.
pub fn kernel_for(arch: Arch) -> &'static Kernel {
    static KERNEL: [OnceLock<Result<Kernel, String>>; Arch::ALL.len()] =
        [const { OnceLock::new() }; Arch::ALL.len()];
    let result = KERNEL[arch.index()].get_or_init(|| {
        let mut command = Command::new(repo_dir().join("qemu/fetch-kernel"));
        command.args(["--arch", arch.name()]);
        let output = run_tool(command)?;
        parse_kernel_paths(&output)
    });
    match result {
        Ok(kernel) => kernel,
        Err(message) => panic!("qemu/fetch-kernel failed:\n{message}"),
    }
}

fn parse_kernel_paths(stdout: &str) -> Result<Kernel, String> {
    // The last two lines: anything a tool printed before the two paths is chatter.
    let mut lines = stdout.lines().rev().filter(|line| !line.trim().is_empty());
    match (lines.next(), lines.next()) {
        (Some(modules), Some(vmlinuz)) => Ok(Kernel {
            vmlinuz: PathBuf::from(vmlinuz.trim()),
            modules: PathBuf::from(modules.trim()),
        }),
        _ => Err(format!(
            "expected the vmlinuz and module tree paths, got:\n{stdout}"
        )),
    }
}

/// The small kernel of `qemu/build-router-kernel` (virtio_blk, squashfs, ext4, overlayfs,
/// loop built in; no modules, no initramfs support): it mounts `root=/dev/vda1` itself.
/// Built at most once per process (a cached build is reused across runs); a failed build
/// panics, so the tests that boot it fail instead of skipping.
pub fn router_kernel() -> &'static Path {
    static ROUTER_KERNEL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = ROUTER_KERNEL.get_or_init(|| {
        let output = run_tool(Command::new(repo_dir().join("qemu/build-router-kernel")))?;
        let path = PathBuf::from(output.lines().last().unwrap_or_default().trim());
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("no bzImage at {path:?}; stdout:\n{output}"))
        }
    });
    match result {
        Ok(path) => path,
        Err(message) => panic!("qemu/build-router-kernel failed:\n{message}"),
    }
}

/// What `qemu/prepare-test-artifacts` builds into [`work_dir`].
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
    /// The static overlay-init binary.
    pub init: PathBuf,
    /// overlay-init + the kernel modules it needs (no shell).
    pub initramfs: PathBuf,
    /// The demo root tree (busybox, `/sbin/test-init`, `/sbin/overlay-init`).
    pub root_dir: PathBuf,
    pub root_sqsh: PathBuf,
    pub root_erofs: PathBuf,
    /// Label `demo-root`.
    pub root_ext4: PathBuf,
    /// Empty 64 MiB ext4, label `overlay`. Never boot it directly: use [`fresh_copy`].
    pub upper_ext4: PathBuf,
    pub kernel: Kernel,
}

/// Builds the init, the initramfs and the demo disks once per test process (later calls wait
/// for the first and share its result).
pub fn artifacts() -> &'static Artifacts {
    artifacts_for(Arch::X86_64)
}

/// [`artifacts`] for `arch`: x86_64's in `target/qemu-test`, another architecture's in
/// `target/qemu-test/ARCH` (its init cross-built, its busybox from Debian's archive).
pub fn artifacts_for(arch: Arch) -> &'static Artifacts {
    static ARTIFACTS: [OnceLock<Result<Artifacts, String>>; Arch::ALL.len()] =
        [const { OnceLock::new() }; Arch::ALL.len()];
    let result = ARTIFACTS[arch.index()].get_or_init(|| {
        let dir = match arch {
            Arch::X86_64 => work_dir(),
            other => work_dir().join(other.name()),
        };
        let mut command = Command::new(repo_dir().join("qemu/prepare-test-artifacts"));
        command.args(["--arch", arch.name()]).arg(&dir);
        let output = run_tool(command)?;
        Ok(Artifacts {
            init: dir.join("overlay-init"),
            initramfs: dir.join("initramfs.cpio.gz"),
            root_dir: dir.join("root"),
            root_sqsh: dir.join("root.sqsh"),
            root_erofs: dir.join("root.erofs"),
            root_ext4: dir.join("root.ext4"),
            upper_ext4: dir.join("upper.ext4"),
            kernel: parse_kernel_paths(&output)?,
            dir,
        })
    });
    match result {
        Ok(artifacts) => artifacts,
        Err(message) => panic!("qemu/prepare-test-artifacts failed:\n{message}"),
    }
}

/// The demo disks alone (`qemu/build-demo`, no overlay-init inside), built once per process
/// into `target/qemu-test/busybox-demo`: for tests that must not depend on the init.
#[derive(Debug, Clone)]
pub struct Demo {
    pub dir: PathBuf,
    pub root_dir: PathBuf,
    pub root_sqsh: PathBuf,
    pub root_erofs: PathBuf,
    pub root_ext4: PathBuf,
    pub upper_ext4: PathBuf,
}

pub fn demo() -> &'static Demo {
    static DEMO: OnceLock<Result<Demo, String>> = OnceLock::new();
    let result = DEMO.get_or_init(|| {
        let dir = work_dir().join("busybox-demo");
        let mut command = Command::new(repo_dir().join("qemu/build-demo"));
        command.arg(&dir);
        run_tool(command)?;
        Ok(Demo {
            root_dir: dir.join("root"),
            root_sqsh: dir.join("root.sqsh"),
            root_erofs: dir.join("root.erofs"),
            root_ext4: dir.join("root.ext4"),
            upper_ext4: dir.join("upper.ext4"),
            dir,
        })
    });
    match result {
        Ok(demo) => demo,
        Err(message) => panic!("qemu/build-demo failed:\n{message}"),
    }
}

/// Runs a tool to completion; Ok(stdout) on success, Err(everything) otherwise.
fn run_tool(mut command: Command) -> Result<String, String> {
    let description = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {description}: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{description} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Booting

#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub readonly: bool,
    pub serial: Option<String>,
    /// Attached as `virtio-blk-device` on a virtio-mmio slot of aarch64's virt board, instead
    /// of `virtio-blk-pci` (`qemu/run --disk PATH,mmio`).
    pub mmio: bool,
    /// QEMU's cache mode (`qemu/run --disk PATH,cache=MODE`), e.g. `unsafe` so that a
    /// killed QEMU loses what the guest did not flush; `None`: qemu/run's default.
    pub cache: Option<&'static str>,
}

impl Disk {
    pub fn rw(path: impl Into<PathBuf>) -> Disk {
        Disk {
            path: path.into(),
            readonly: false,
            serial: None,
            mmio: false,
            cache: None,
        }
    }

    pub fn ro(path: impl Into<PathBuf>) -> Disk {
        Disk {
            path: path.into(),
            readonly: true,
            serial: None,
            mmio: false,
            cache: None,
        }
    }

    fn spec(&self) -> String {
        let mut spec = self.path.display().to_string();
        if self.readonly {
            spec.push_str(",ro");
        }
        if let Some(serial) = &self.serial {
            spec.push_str(&format!(",serial={serial}"));
        }
        if self.mmio {
            spec.push_str(",mmio");
        }
        if let Some(mode) = self.cache {
            spec.push_str(&format!(",cache={mode}"));
        }
        spec
    }
}

#[derive(Debug, Clone, Default)]
pub enum Initrd {
    /// overlay-init's initramfs from [`artifacts`].
    #[default]
    Default,
    Path(PathBuf),
    /// Boot without an initramfs (router mode).
    None,
}

/// Something the harness does once the console has printed `after`.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub after: String,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Bytes typed on the serial console.
    Console(Vec<u8>),
    /// A QEMU human monitor command (needs `BootSpec::monitor`), e.g.
    /// `drive_add 0 if=none,id=late,format=raw,file=/path` then
    /// `device_add virtio-blk-pci,drive=late`.
    Monitor(String),
    /// SIGKILL qemu/run and QEMU (a power cut) this long after the trigger's text appeared.
    Kill(Duration),
}

#[derive(Debug, Clone)]
pub struct BootSpec {
    /// The guest architecture; the defaults below (kernel, initramfs) follow it.
    pub arch: Arch,
    /// Kernel parameters after `console=TTY panic=-1` (ttyS0 on x86_64, with no_timer_check;
    /// ttyAMA0 on aarch64).
    pub append: String,
    /// vda, vdb, ... in order.
    pub disks: Vec<Disk>,
    /// A CD-ROM image (`qemu/run --cdrom`: /dev/sr0 on x86_64).
    pub cdrom: Option<PathBuf>,
    /// Hard bound for the whole boot (scaled by `OVL_QEMU_TIMEOUT_SCALE`). The same on every
    /// architecture: an aarch64 boot (virt, no firmware) takes no longer under TCG than an
    /// x86_64 one (pc, SeaBIOS) here.
    pub timeout: Duration,
    pub initrd: Initrd,
    /// Default: the cached Debian kernel.
    pub kernel: Option<PathBuf>,
    /// A unix socket path for the QEMU monitor.
    pub monitor: Option<PathBuf>,
    pub triggers: Vec<Trigger>,
    /// Adds `quiet` to the kernel command line.
    pub quiet: bool,
}

impl Default for BootSpec {
    fn default() -> BootSpec {
        BootSpec {
            arch: Arch::X86_64,
            append: String::new(),
            disks: Vec::new(),
            cdrom: None,
            timeout: BOOT_TIMEOUT,
            initrd: Initrd::Default,
            kernel: None,
            monitor: None,
            triggers: Vec::new(),
            quiet: false,
        }
    }
}

/// How a boot ended (the exit status of `qemu/run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The guest powered off ("reboot: Power down").
    PowerOff,
    /// The kernel panicked.
    Panic,
    /// The guest rebooted (QEMU runs with -no-reboot, so the run ends).
    Reboot,
    /// `qemu/run --timeout` fired.
    Timeout,
    /// qemu/run itself did not finish within the timeout plus a margin, and was killed.
    HarnessTimeout,
    Other(Option<i32>),
}

pub struct BootResult {
    /// Everything the guest wrote to the serial console.
    pub console: String,
    /// qemu/run's own messages.
    pub stderr: String,
    pub exit: Exit,
    pub elapsed: Duration,
    /// The replies to `Action::Monitor` commands, in order.
    pub monitor_replies: Vec<String>,
}

impl BootResult {
    /// The kernel's timestamp (uptime, seconds) of the first console line containing `text`.
    pub fn kernel_time_of(&self, text: &str) -> Option<f64> {
        let line = self.console.lines().find(|line| line.contains(text))?;
        let stamp = line.trim_start().strip_prefix('[')?.split(']').next()?;
        stamp.trim().parse().ok()
    }

    pub fn contains(&self, text: &str) -> bool {
        self.console.contains(text)
    }

    /// What the test command printed: the console lines after test-init's
    /// `OVLTEST: pid=` line (which echoes the script, so markers written in the
    /// script itself never match) up to `OVLTEST: exit=`.
    pub fn output(&self) -> &str {
        let Some(start) = self.console.find("OVLTEST: pid=") else {
            return "";
        };
        let rest = &self.console[start..];
        let rest = rest.find('\n').map_or("", |nl| &rest[nl + 1..]);
        rest.find("OVLTEST: exit=").map_or(rest, |end| &rest[..end])
    }

    /// The rest of every line of [`BootResult::output`] that contains `prefix`.
    pub fn output_values(&self, prefix: &str) -> Vec<&str> {
        self.output()
            .lines()
            .filter_map(|line| {
                line.find(prefix)
                    .map(|at| line[at + prefix.len()..].trim_end())
            })
            .collect()
    }

    /// The rest of every console line that contains `prefix`, after it.
    pub fn values(&self, prefix: &str) -> Vec<&str> {
        self.console
            .lines()
            .filter_map(|line| {
                line.find(prefix)
                    .map(|at| line[at + prefix.len()..].trim_end())
            })
            .collect()
    }

    /// The test command's exit status printed by /sbin/test-init.
    pub fn test_exit(&self) -> Option<i32> {
        self.values("OVLTEST: exit=")
            .first()
            .and_then(|value| value.parse().ok())
    }
}

impl fmt::Debug for BootResult {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "boot ended with {:?} after {:.1?}\n--- console ---\n{}\n--- qemu/run stderr ---\n{}",
            self.exit, self.elapsed, self.console, self.stderr
        )
    }
}

#[track_caller]
pub fn assert_marker(result: &BootResult, marker: &str) {
    assert!(
        result.contains(marker),
        "console lacks {marker:?}\n{result:?}"
    );
}

/// The test command printed `text` (see [`BootResult::output`]).
#[track_caller]
pub fn assert_output(result: &BootResult, text: &str) {
    assert!(
        result.output().contains(text),
        "the test command did not print {text:?}\n{result:?}"
    );
}

/// The test command printed exactly this line (the script itself is echoed on the console, so
/// a bare marker could match its own `echo`).
#[track_caller]
pub fn assert_output_line(result: &BootResult, line: &str) {
    assert!(
        result
            .output()
            .lines()
            .any(|printed| printed.trim_end() == line),
        "the test command did not print the line {line:?}\n{result:?}"
    );
}

/// The test command did not print `text`.
#[track_caller]
pub fn assert_no_output(result: &BootResult, text: &str) {
    assert!(
        !result.output().contains(text),
        "the test command printed {text:?}\n{result:?}"
    );
}

#[track_caller]
pub fn assert_no_marker(result: &BootResult, marker: &str) {
    assert!(
        !result.contains(marker),
        "console has {marker:?}\n{result:?}"
    );
}

#[track_caller]
pub fn assert_exit(result: &BootResult, expected: Exit) {
    assert_eq!(result.exit, expected, "unexpected end of boot\n{result:?}");
}

/// A boot of the test root: the command runs as the real init's job (see `/sbin/test-init`),
/// and the guest must power off cleanly with the command exiting 0.
#[track_caller]
pub fn assert_test_passed(result: &BootResult) {
    assert_marker(result, "OVLTEST: pid=");
    assert_eq!(
        result.test_exit(),
        Some(0),
        "the test command failed\n{result:?}"
    );
    assert_exit(result, Exit::PowerOff);
}

/// `init=/sbin/test-init -- "SCRIPT"` for the kernel command line. The kernel strips the quotes;
/// the script must not contain a double quote, and the whole command line stays under 2 KiB.
pub fn test_init_args(script: &str) -> String {
    assert!(
        !script.contains('"'),
        "a double quote cannot pass the kernel command line: {script}"
    );
    format!("init=/sbin/test-init -- \"{script}\"")
}

/// `OVL_QEMU_TIMEOUT_SCALE` (default 1): every boot's hard timeout is multiplied by it.
pub fn timeout_scale() -> f64 {
    std::env::var("OVL_QEMU_TIMEOUT_SCALE")
        .ok()
        .and_then(|value| value.parse::<f64>().ok())
        .filter(|scale| *scale > 0.0)
        .unwrap_or(1.0)
}

/// At most `OVL_QEMU_JOBS` (default 2) guests run at once in this process.
struct Slots {
    busy: Mutex<usize>,
    freed: Condvar,
}

struct SlotGuard(&'static Slots);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap() -= 1;
        self.0.freed.notify_one();
    }
}

fn take_slot() -> SlotGuard {
    static SLOTS: Slots = Slots {
        busy: Mutex::new(0),
        freed: Condvar::new(),
    };
    let limit = std::env::var("OVL_QEMU_JOBS")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .filter(|jobs| *jobs > 0)
        .unwrap_or(2);
    let mut busy = SLOTS.busy.lock().unwrap();
    while *busy >= limit {
        busy = SLOTS.freed.wait(busy).unwrap();
    }
    *busy += 1;
    SlotGuard(&SLOTS)
}

/// Kills qemu/run and QEMU (its own process group) if the harness gives up on them.
struct GroupGuard {
    child: Child,
}

impl GroupGuard {
    fn kill(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// SIGKILL the QEMU process started by qemu/run (`child`): a descendant named qemu-system-*,
/// found in /proc (GNU timeout puts QEMU in a process group of its own), so qemu/run itself
/// sees it die and cleans up. False when none was found.
fn kill_qemu_of(child: &Child) -> bool {
    // pid -> (comm, ppid), from /proc/PID/stat: "pid (comm) state ppid ...".
    let mut procs = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        procs.insert(pid, (comm, ppid.unwrap_or(0)));
    }
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            match procs.get(&pid) {
                Some((_, ppid)) if *ppid == child.id() => return true,
                Some((_, ppid)) if *ppid > 1 => pid = *ppid,
                _ => return false,
            }
        }
        false
    };
    let mut killed = false;
    for (pid, (comm, _)) in &procs {
        if comm.starts_with("qemu-system") && descends(*pid) {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                killed |= rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok();
            }
        }
    }
    killed
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
            let _ = self.child.wait();
        }
    }
}

/// Boots QEMU headless via `qemu/run` and returns the console and how the boot ended.
pub fn boot(spec: &BootSpec) -> BootResult {
    let timeout = spec.timeout.mul_f64(timeout_scale());
    let mut command = Command::new(repo_dir().join("qemu/run"));
    command
        .args(["--arch", spec.arch.name()])
        .arg("--headless")
        .arg("--timeout")
        .arg(format!("{:.1}", timeout.as_secs_f64()));
    match &spec.kernel {
        Some(path) => command.arg("--kernel").arg(path),
        None => command.arg("--kernel").arg(&kernel_for(spec.arch).vmlinuz),
    };
    match &spec.initrd {
        Initrd::Default => command
            .arg("--initrd")
            .arg(&artifacts_for(spec.arch).initramfs),
        Initrd::Path(path) => command.arg("--initrd").arg(path),
        Initrd::None => command.arg("--no-initrd"),
    };
    for disk in &spec.disks {
        command.arg("--disk").arg(disk.spec());
    }
    if let Some(cdrom) = &spec.cdrom {
        command.arg("--cdrom").arg(cdrom);
    }
    if !spec.append.is_empty() {
        command.arg("--append").arg(&spec.append);
    }
    if spec.quiet {
        command.arg("--quiet");
    }
    if let Some(socket) = &spec.monitor {
        let _ = fs::remove_file(socket);
        command.arg("--monitor").arg(socket);
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);

    let _slot = take_slot();
    let started = Instant::now();
    let child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run qemu/run: {error}"));
    let mut guard = GroupGuard { child };
    let mut stdin = guard.child.stdin.take();
    let stdout = guard.child.stdout.take().unwrap();
    let stderr = guard.child.stderr.take().unwrap();
    let stderr_reader = thread::spawn(move || read_all(stderr));
    let (chunks, chunk_receiver) = mpsc::channel::<Vec<u8>>();
    let stdout_reader = thread::spawn(move || {
        let mut stdout = stdout;
        let mut buffer = [0u8; 4096];
        while let Ok(count) = stdout.read(&mut buffer) {
            if count == 0 || chunks.send(buffer[..count].to_vec()).is_err() {
                break;
            }
        }
    });

    // qemu/run enforces the timeout; the margin covers its start-up and QEMU's kill.
    let deadline = started + timeout + Duration::from_secs(20);
    let mut console = Vec::new();
    let mut pending: Vec<&Trigger> = spec.triggers.iter().collect();
    let mut monitor_replies = Vec::new();
    let mut harness_timeout = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            harness_timeout = true;
            guard.kill();
            break;
        }
        match chunk_receiver.recv_timeout(deadline - now) {
            Ok(chunk) => console.extend_from_slice(&chunk),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let text = String::from_utf8_lossy(&console);
        let mut fired = Vec::new();
        for (index, trigger) in pending.iter().enumerate() {
            if !text.contains(&trigger.after) {
                continue;
            }
            fired.push(index);
            match &trigger.action {
                Action::Console(bytes) => {
                    if let Some(input) = stdin.as_mut() {
                        let _ = input.write_all(bytes).and_then(|()| input.flush());
                    }
                }
                Action::Kill(delay) => {
                    // Not a synchronisation: the instant of the power cut is chosen by the test.
                    thread::sleep(*delay);
                    if !kill_qemu_of(&guard.child) {
                        guard.kill();
                    }
                }
                Action::Monitor(line) => {
                    let socket = spec
                        .monitor
                        .as_ref()
                        .expect("Action::Monitor needs BootSpec::monitor");
                    monitor_replies.push(
                        monitor_command(socket, line)
                            .unwrap_or_else(|error| format!("monitor error: {error}")),
                    );
                }
            }
        }
        for index in fired.into_iter().rev() {
            pending.remove(index);
        }
    }
    drop(stdin);
    let status = guard.child.wait().expect("wait for qemu/run");
    let _ = stdout_reader.join();
    while let Ok(chunk) = chunk_receiver.try_recv() {
        console.extend_from_slice(&chunk);
    }
    let exit = if harness_timeout {
        Exit::HarnessTimeout
    } else {
        match status.code() {
            Some(0) => Exit::PowerOff,
            Some(1) => Exit::Panic,
            Some(3) => Exit::Reboot,
            Some(124) => Exit::Timeout,
            code => Exit::Other(code),
        }
    };
    BootResult {
        console: String::from_utf8_lossy(&console).into_owned(),
        stderr: stderr_reader.join().unwrap_or_default(),
        exit,
        elapsed: started.elapsed(),
        monitor_replies,
    }
}

fn read_all(mut reader: impl Read) -> String {
    let mut bytes = Vec::new();
    let _ = reader.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Sends one command to a QEMU human monitor socket and returns its reply.
pub fn monitor_command(socket: &Path, command: &str) -> std::io::Result<String> {
    const PROMPT: &str = "(qemu) ";
    fn read_until_prompt(stream: &mut UnixStream) -> std::io::Result<String> {
        let mut reply = Vec::new();
        let mut buffer = [0u8; 1024];
        while !String::from_utf8_lossy(&reply).ends_with(PROMPT) {
            let count = stream.read(&mut buffer)?;
            if count == 0 {
                break;
            }
            reply.extend_from_slice(&buffer[..count]);
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    read_until_prompt(&mut stream)?; // the banner
    stream.write_all(format!("{command}\n").as_bytes())?;
    let reply = read_until_prompt(&mut stream)?;
    // The monitor echoes the command with terminal escapes; keep the lines after it.
    let lines: Vec<&str> = reply
        .lines()
        .skip(1)
        .filter(|line| !line.starts_with(PROMPT))
        .collect();
    Ok(lines.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// A busybox initramfs

/// A shell initramfs: busybox at `/bin/busybox` (+ `/bin/sh`), the named kernel modules at
/// `/lib/modules/NAME.ko` with their load order in `/lib/modules/order`, extra files, and
/// `/init` = `#!/bin/busybox sh` + `init_script` (PATH=/bin, every applet via `busybox`).
#[derive(Debug, Clone, Default)]
pub struct BusyboxInitramfs {
    pub init_script: String,
    pub modules: Vec<String>,
    /// (source, absolute destination)
    pub files: Vec<(PathBuf, String)>,
}

/// Shell that loads `/lib/modules/order` in order (for `BusyboxInitramfs::init_script`).
pub const INSMOD_ALL: &str =
    "for m in $(busybox cat /lib/modules/order); do busybox insmod /lib/modules/$m.ko || echo \"insmod $m failed\"; done\n";

/// `init_script` of a busybox stand-in for overlay-init, the usual shell way: squashfs lower on
/// /dev/vda, ext4 upper on /dev/vdb, overlay, /rom and /overlay moved in, switch_root into
/// `$INIT` (default /sbin/test-init) with the kernel's init arguments. Needs the modules
/// `VIRTIO_BLK_MODULES` + squashfs + overlay in that order.
pub const BUSYBOX_OVERLAY_INIT: &str = r#"busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev
for m in $(busybox cat /lib/modules/order); do busybox insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
busybox mkdir -p /lower /upper /newroot
busybox mount -t squashfs -o ro /dev/vda /lower || echo "STANDIN: lower mount failed"
busybox mount -t ext4 /dev/vdb /upper || echo "STANDIN: upper mount failed"
busybox mkdir -p /upper/upper /upper/work
busybox mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/upper,workdir=/upper/work /newroot
for m in lower:rom upper:overlay dev:dev proc:proc sys:sys; do busybox mount --move /${m%:*} /newroot/${m#*:}; done
exec busybox switch_root /newroot ${INIT:-/sbin/test-init} "$@"
"#;

impl BusyboxInitramfs {
    /// Writes an uncompressed newc cpio (the kernel takes it as is).
    pub fn build(&self, out: &Path) {
        let scratch = Scratch::new("initramfs");
        let root = scratch.join("root");
        for dir in ["bin", "dev", "proc", "sys", "run", "newroot", "lib/modules"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::copy(busybox(), root.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
        run(Command::new("mknod")
            .arg(root.join("dev/console"))
            .args(["c", "5", "1"]));
        let index = module_index();
        for name in &self.modules {
            let source = index
                .get(&name.replace('-', "_"))
                .unwrap_or_else(|| panic!("no module {name} in {}", kernel().modules.display()));
            fs::copy(source, root.join(format!("lib/modules/{name}.ko"))).unwrap();
        }
        write_file(
            &root.join("lib/modules/order"),
            self.modules.join("\n") + "\n",
            0o644,
        );
        for (source, destination) in &self.files {
            let target = root.join(destination.trim_start_matches('/'));
            fs::create_dir_all(target.parent().unwrap()).unwrap();
            fs::copy(source, &target)
                .unwrap_or_else(|error| panic!("copy {} to initramfs: {error}", source.display()));
        }
        let init = format!("#!/bin/busybox sh\nexport PATH=/bin\n{}", self.init_script);
        write_file(&root.join("init"), init, 0o755);
        let list = run(Command::new("find").arg(".").current_dir(&root));
        let mut sorted: Vec<&str> = list.lines().collect();
        sorted.sort_unstable();
        let mut cpio = Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet", "--reproducible", "-O"])
            .arg(out)
            .current_dir(&root)
            .stdin(Stdio::piped())
            .spawn()
            .expect("run cpio");
        cpio.stdin
            .take()
            .unwrap()
            .write_all((sorted.join("\n") + "\n").as_bytes())
            .unwrap();
        assert!(
            cpio.wait().unwrap().success(),
            "cpio failed for {}",
            out.display()
        );
    }
}

/// The host's static busybox.
pub fn busybox() -> PathBuf {
    for candidate in ["/usr/bin/busybox", "/bin/busybox", "/usr/sbin/busybox"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("busybox is missing (Debian package: busybox-static)");
}

/// Module name (with `_`) -> `.ko` path in the cached kernel's tree.
fn module_index() -> &'static HashMap<String, PathBuf> {
    static INDEX: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let list = run(Command::new("find")
            .arg(&kernel().modules)
            .args(["-name", "*.ko"]));
        list.lines()
            .map(|line| {
                let path = PathBuf::from(line);
                let name = path
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .replace('-', "_");
                (name, path)
            })
            .collect()
    })
}
