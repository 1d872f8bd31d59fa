//! Loads the kernel modules the initramfs index lists, with `finit_module`.
//!
//! Order comes from the index: a module starts only after every module it depends
//! on has loaded. With `parallel`, a few worker threads take whichever module is
//! ready, so independent chains (virtio, squashfs, overlay...) load side by side.
//! A failure is logged by name and only stops the modules that need the failed one.

use crate::modindex::{IndexEntry, ModuleIndex};
use anyhow::{Context, Result};
use rustix::io::Errno;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// `finit_module` flag: the file is compressed and the kernel decompresses it (5.17+).
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;
/// Upper bound on loader threads: module loading is short and mostly serialised
/// inside the kernel, so more threads than this only cost memory.
const MAX_WORKERS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Loaded,
    /// `EEXIST`: built in or loaded before; as good as loaded.
    AlreadyPresent,
    Failed(String),
    /// Not tried because this module (directly or not) needs one that failed.
    SkippedDependencyFailed(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Loaded | Outcome::AlreadyPresent)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoad {
    pub name: String,
    pub outcome: Outcome,
    pub duration: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// One record per index entry, in index order.
    pub modules: Vec<ModuleLoad>,
    pub total: Duration,
}

impl LoadReport {
    pub fn failed(&self) -> impl Iterator<Item = &ModuleLoad> {
        self.modules.iter().filter(|load| !load.outcome.is_ok())
    }
}

/// Loads one module file; `EEXIST` counts as success.
fn load_module(path: &Path, compressed: bool) -> Outcome {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) => return Outcome::Failed(format!("opening {}: {error}", path.display())),
    };
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    match rustix::system::finit_module(&file, c"", flags) {
        Ok(()) => Outcome::Loaded,
        Err(Errno::EXIST) => Outcome::AlreadyPresent,
        Err(errno) => Outcome::Failed(std::io::Error::from(errno).to_string()),
    }
}

#[derive(Clone)]
enum Slot {
    Waiting,
    Running,
    Finished(Outcome, Duration),
}

/// The next module that can start, marking ones whose dependencies failed as
/// skipped on the way. Dependencies precede dependents, so one pass suffices.
fn take_ready(index: &ModuleIndex, slots: &mut [Slot]) -> Option<usize> {
    for position in 0..index.entries.len() {
        if !matches!(slots[position], Slot::Waiting) {
            continue;
        }
        let mut all_loaded = true;
        let mut failed_dependency = None;
        for &dependency in &index.entries[position].depends {
            match &slots[dependency] {
                Slot::Finished(outcome, _) if outcome.is_ok() => {}
                Slot::Finished(..) => failed_dependency = Some(dependency),
                _ => all_loaded = false,
            }
        }
        if let Some(dependency) = failed_dependency {
            let needed = index.entries[dependency].name.clone();
            slots[position] =
                Slot::Finished(Outcome::SkippedDependencyFailed(needed), Duration::ZERO);
        } else if all_loaded {
            slots[position] = Slot::Running;
            return Some(position);
        }
    }
    None
}

fn log_outcome(entry: &IndexEntry, outcome: &Outcome, duration: Duration) {
    match outcome {
        Outcome::Loaded => log::debug!("module {} loaded in {duration:?}", entry.name),
        Outcome::AlreadyPresent => {
            log::debug!("module {} already present (built in or loaded)", entry.name)
        }
        Outcome::Failed(error) => log::error!(
            "module {} ({}) failed to load: {error}",
            entry.name,
            entry.path
        ),
        Outcome::SkippedDependencyFailed(needed) => {
            log::error!(
                "module {} not loaded: it needs {needed}, which failed",
                entry.name
            )
        }
    }
}

/// Runs the loader with `workers` threads (1 = in index order on this thread).
fn run(index: &ModuleIndex, directory: &Path, workers: usize) -> Vec<Slot> {
    let state = Mutex::new(vec![Slot::Waiting; index.entries.len()]);
    let progress = Condvar::new();
    let worker = || loop {
        let position = {
            let mut slots = state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            loop {
                if let Some(position) = take_ready(index, &mut slots) {
                    break position;
                }
                if !slots.iter().any(|slot| matches!(slot, Slot::Running)) {
                    return; // nothing running, nothing ready: all done
                }
                slots = progress
                    .wait(slots)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        let entry = &index.entries[position];
        let started = Instant::now();
        let outcome = load_module(&directory.join(&entry.path), entry.is_compressed());
        let duration = started.elapsed();
        log_outcome(entry, &outcome, duration);
        let mut slots = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots[position] = Slot::Finished(outcome, duration);
        progress.notify_all();
    };
    if workers <= 1 {
        worker();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(worker);
            }
        });
    }
    state
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_index(index_path: &Path) -> Result<(ModuleIndex, PathBuf)> {
    let text = std::fs::read_to_string(index_path)
        .with_context(|| format!("reading module index {}", index_path.display()))?;
    let index = ModuleIndex::parse(&text)
        .with_context(|| format!("parsing module index {}", index_path.display()))?;
    let directory = index_path
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    Ok((index, directory))
}

/// Loads the modules at `positions` (ascending) of `index`.
fn load_positions(
    index: &ModuleIndex,
    directory: &Path,
    positions: &[usize],
    parallel: bool,
) -> LoadReport {
    let started = Instant::now();
    let index = index.subset(positions);
    let workers = if parallel {
        let cpus = usable_cpus() as usize;
        // Two at least: one module's load can wait on I/O while another's runs.
        cpus.clamp(2, MAX_WORKERS).min(index.entries.len())
    } else {
        1
    };
    let slots = run(&index, directory, workers);
    let modules = index
        .entries
        .iter()
        .zip(slots)
        .map(|(entry, slot)| {
            let (outcome, duration) = match slot {
                Slot::Finished(outcome, duration) => (outcome, duration),
                // Unreachable by construction (every entry's dependencies come first).
                Slot::Waiting | Slot::Running => {
                    (Outcome::Failed("never started".into()), Duration::ZERO)
                }
            };
            ModuleLoad {
                name: entry.name.clone(),
                outcome,
                duration,
            }
        })
        .collect();
    LoadReport {
        modules,
        total: started.elapsed(),
    }
}

/// CPUs this process may run on (`sched_getaffinity`: one system call, unlike
/// `available_parallelism`, which also reads cgroup files).
pub fn usable_cpus() -> u32 {
    rustix::thread::sched_getaffinity(None).map_or(1, |set| set.count())
}

/// PID 1's module loader: what the index lists, and what was tried already.
struct Loader {
    index: ModuleIndex,
    directory: PathBuf,
    parallel: bool,
    tried: Vec<bool>,
}

static LOADER: Mutex<Option<Loader>> = Mutex::new(None);

/// Load every module of the index at once except the `on_demand` ones (and
/// what only they need); [`load_on_demand`] loads those when a mount needs
/// them, so a boot loads no filesystem driver it does not use.
pub fn load_eager(index_path: &Path, parallel: bool, on_demand: &[&str]) -> Result<LoadReport> {
    let (index, directory) = read_index(index_path)?;
    let eager = index.eager(on_demand);
    let mut tried = vec![false; index.entries.len()];
    for &p in &eager {
        tried[p] = true;
    }
    let report = load_positions(&index, &directory, &eager, parallel);
    *LOADER.lock().unwrap_or_else(|p| p.into_inner()) = Some(Loader {
        index,
        directory,
        parallel,
        tried,
    });
    Ok(report)
}

/// Load `name` and what it needs, if the index has it and it was not tried
/// before. `None` when there was nothing to load.
pub fn load_on_demand(name: &str) -> Option<LoadReport> {
    let mut guard = LOADER.lock().unwrap_or_else(|p| p.into_inner());
    let loader = guard.as_mut()?;
    let wanted: Vec<usize> = loader
        .index
        .closure(&[name])
        .into_iter()
        .filter(|&p| !loader.tried[p])
        .collect();
    if wanted.is_empty() {
        return None;
    }
    for &p in &wanted {
        loader.tried[p] = true;
    }
    Some(load_positions(
        &loader.index,
        &loader.directory,
        &wanted,
        loader.parallel,
    ))
}

/// Whether the kernel knows the filesystem type `fstype` (`/proc/filesystems`).
pub fn kernel_has_filesystem(fstype: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|text| {
        text.lines()
            .any(|line| line.split_whitespace().last() == Some(fstype))
    })
}

/// Make sure the kernel can mount `fstype`, loading its module if the index has it.
pub fn ensure_filesystem(fstype: &str) {
    if !kernel_has_filesystem(fstype) {
        if let Some(report) = load_on_demand(fstype) {
            log::debug!(
                "{} modules loaded on demand for {fstype} in {:?}",
                report.modules.len(),
                report.total
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads every module `index_path` lists (paths relative to its directory).
    fn load_from_index(index_path: &Path, parallel: bool) -> Result<LoadReport> {
        let (index, directory) = read_index(index_path)?;
        let all: Vec<usize> = (0..index.entries.len()).collect();
        Ok(load_positions(&index, &directory, &all, parallel))
    }

    fn index(lines: &[(&str, &[&str])]) -> ModuleIndex {
        let mut index = ModuleIndex::default();
        for (name, depends) in lines {
            index
                .push(name, &format!("{name}.ko"), depends.iter().copied())
                .unwrap();
        }
        index
    }

    #[test]
    fn ready_modules_wait_for_dependencies_and_failures_cascade() {
        let index = index(&[("a", &[]), ("b", &["a"]), ("c", &[]), ("d", &["b", "c"])]);
        let mut slots = vec![Slot::Waiting; 4];
        assert_eq!(take_ready(&index, &mut slots), Some(0));
        assert_eq!(take_ready(&index, &mut slots), Some(2)); // c is independent of a
        assert_eq!(take_ready(&index, &mut slots), None); // b waits for a, d for b and c
        slots[0] = Slot::Finished(Outcome::Failed("ENOEXEC".into()), Duration::ZERO);
        slots[2] = Slot::Finished(Outcome::AlreadyPresent, Duration::ZERO);
        assert_eq!(take_ready(&index, &mut slots), None);
        assert!(
            matches!(&slots[1], Slot::Finished(Outcome::SkippedDependencyFailed(n), _) if n == "a")
        );
        assert!(
            matches!(&slots[3], Slot::Finished(Outcome::SkippedDependencyFailed(n), _) if n == "b")
        );
    }

    /// Module files that do not exist: every load fails at open, which exercises the
    /// scheduler end to end without touching the kernel's module list.
    #[test]
    fn missing_files_fail_by_name_and_dependents_are_skipped_in_both_modes() {
        let directory =
            std::env::temp_dir().join(format!("overlay-init-modules-test-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let index_path = directory.join("test.index");
        let text = index(&[("a", &[]), ("b", &["a"]), ("c", &[]), ("d", &["c"])]).render();
        std::fs::write(&index_path, text).unwrap();
        for parallel in [false, true] {
            let report = load_from_index(&index_path, parallel).unwrap();
            let names: Vec<&str> = report.modules.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, ["a", "b", "c", "d"]);
            assert!(matches!(&report.modules[0].outcome, Outcome::Failed(e) if e.contains("a.ko")));
            assert_eq!(
                report.modules[1].outcome,
                Outcome::SkippedDependencyFailed("a".into())
            );
            assert!(matches!(&report.modules[2].outcome, Outcome::Failed(_)));
            assert_eq!(
                report.modules[3].outcome,
                Outcome::SkippedDependencyFailed("c".into())
            );
            assert_eq!(report.failed().count(), 4);
        }
        std::fs::remove_dir_all(&directory).unwrap();
        let error = load_from_index(&index_path, true).unwrap_err();
        assert!(
            format!("{error:#}").contains("reading module index"),
            "{error:#}"
        );
    }
}
