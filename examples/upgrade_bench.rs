//! Driver for `benches/upgrade.sh`: the cost of a lower identity, and of a
//! reset that carries a keep-list.
//!
//! ```text
//! upgrade_bench identity DEV LOWER_ROOT          prints "<ns> <metadata bytes hashed>"
//! upgrade_bench kept DIR COUNT SIZE              COUNT files of SIZE bytes under DIR/etc/kept,
//!                                                prints the keep-list (one path a line)
//! upgrade_bench reset-keeping UPPER_ROOT LOWER KEEPLIST
//!                                                prints "<reset ns> <carry-kept ns> <entries carried>"
//! ```

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use overlay_init::reset::{self, BootFlags, ResetOutcome, Step};
use overlay_init::sys::carry::LinkMode;
use overlay_init::upgrade::keep;

fn main() -> Result<()> {
    overlay_init::logger::init_cli(false);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["identity", dev, lower] => {
            let (id, took) =
                overlay_init::sys::lower_identity::identify(Path::new(dev), Path::new(lower))?;
            eprintln!("identity: {}", id.describe());
            println!("{} {}", took.as_nanos(), id.meta_bytes);
            Ok(())
        }
        ["kept", dir, count, size] => {
            let dir = Path::new(dir).join("etc/kept");
            std::fs::create_dir_all(&dir)?;
            let size: usize = size.parse().context("SIZE")?;
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            for i in 0..count.parse::<usize>().context("COUNT")? {
                std::fs::write(dir.join(format!("k{i}")), &data)?;
                println!("/etc/kept/k{i}");
            }
            Ok(())
        }
        ["reset-keeping", upper_root, lower, list] => {
            let keep = keep::parse(&std::fs::read(list).context("read the keep-list")?);
            if !keep.bad.is_empty() {
                bail!("bad keep-list: {:?}", keep.bad);
            }
            let lower_dev = {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(lower)?.dev()
            };
            let began = Instant::now();
            let outcome = reset::apply_pending_keeping(
                Path::new(upper_root),
                BootFlags {
                    cmdline_reset: true,
                    failsafe: false,
                },
                Some(lower_dev),
                &keep,
                LinkMode::HardLinkWherePossible,
                &mut |_| Ok(()),
            )?;
            let total = began.elapsed();
            let ResetOutcome::Done { steps, .. } = outcome else {
                bail!("no reset happened: {outcome:?}");
            };
            let carry = steps
                .iter()
                .find(|s| s.step == Step::CarryKept)
                .context("no carry-kept step")?;
            let steps_text: Vec<String> = steps
                .iter()
                .map(|s| format!("{}={:.2}ms", s.step.name(), s.took.as_secs_f64() * 1e3))
                .collect();
            eprintln!("steps: {}", steps_text.join(" "));
            let carried =
                std::fs::read_dir(reset::upperdir(Path::new(upper_root)).join("etc/kept"))
                    .map(|d| d.count())
                    .unwrap_or(0);
            println!("{} {} {}", total.as_nanos(), carry.took.as_nanos(), carried);
            Ok(())
        }
        _ => bail!("usage: see the header of examples/upgrade_bench.rs"),
    }
}
