//! Driver for `benches/reset.sh`: fills an upper, times the boot-path side of
//! a factory reset (reset + overlay mount), and removes the trash.
//!
//! ```text
//! reset_bench fill DIR COUNT                 COUNT small files under DIR, 1,000 per directory
//! reset_bench reset UPPER_ROOT LOWER TARGET  prints "<reset ns> <reset+mount ns>", then unmounts
//! reset_bench wipe UPPER_ROOT                prints "<ns> <entries removed>"
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use overlay_init::reset::{self, BootFlags, ResetOutcome};
use rustix::mount::{MountFlags, UnmountFlags};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["fill", dir, count] => fill(Path::new(dir), count.parse().context("COUNT")?),
        ["reset", upper_root, lower, target] => {
            time_reset(Path::new(upper_root), Path::new(lower), Path::new(target))
        }
        ["wipe", upper_root] => {
            let began = Instant::now();
            let report = reset::remove_trash_now(Path::new(upper_root))?;
            if !report.is_complete() {
                bail!("trash not fully removed: {report:?}");
            }
            println!("{} {}", began.elapsed().as_nanos(), report.removed);
            Ok(())
        }
        _ => bail!(
            "usage: reset_bench fill DIR COUNT | reset UPPER_ROOT LOWER TARGET | wipe UPPER_ROOT"
        ),
    }
}

fn fill(dir: &Path, count: usize) -> Result<()> {
    let mut sub = PathBuf::new();
    for i in 0..count {
        if i % 1000 == 0 {
            sub = dir.join(format!("d{}", i / 1000));
            std::fs::create_dir_all(&sub).with_context(|| format!("mkdir {}", sub.display()))?;
        }
        std::fs::write(sub.join(format!(".f{i}")), b"some upper data\n")?;
    }
    Ok(())
}

fn time_reset(upper_root: &Path, lower: &Path, target: &Path) -> Result<()> {
    let lower_dev = reset_dev(lower)?;
    let began = Instant::now();
    let outcome = reset::apply_pending(
        upper_root,
        BootFlags {
            cmdline_reset: true,
            failsafe: false,
        },
        Some(lower_dev),
    )?;
    let reset_done = began.elapsed();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        reset::upperdir(upper_root).display(),
        reset::workdir(upper_root).display()
    );
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        std::ffi::CString::new(options)?.as_c_str(),
    )
    .with_context(|| format!("mount overlay on {}", target.display()))?;
    let mounted = began.elapsed();
    let ResetOutcome::Done { steps, .. } = outcome else {
        bail!("no reset happened: {outcome:?}");
    };
    let steps: Vec<String> = steps
        .iter()
        .map(|s| format!("{}={:.2}ms", s.step.name(), s.took.as_secs_f64() * 1e3))
        .collect();
    eprintln!("steps: {}", steps.join(" "));
    rustix::mount::unmount(target, UnmountFlags::empty()).context("unmount overlay")?;
    println!("{} {}", reset_done.as_nanos(), mounted.as_nanos());
    Ok(())
}

fn reset_dev(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .dev())
}
