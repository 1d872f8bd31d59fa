//! Test driver for `tests/qemu/verity_dm.rs`: the library's dm-verity code
//! (`sys::verity`, `sys::dm`) as a small command, run inside a QEMU guest
//! (the development host's kernel may lack device-mapper).
//!
//! ```text
//! dm_verity open NAME DATA HASH HASHOFFSET ROOTHASH [eio|restart|panic]
//!     HASHOFFSET "auto": the tree appended after DATA's filesystem
//!     prints "VERITY: open NAME path=/dev/mapper/NAME dev=MAJ:MIN params=..."
//! dm_verity status NAME      prints "VERITY: status NAME STATUS"
//! dm_verity describe NAME    prints "VERITY: describe NAME root=HASH onerror=MODE corrupted=BOOL"
//!                            or "VERITY: describe NAME none"
//! dm_verity remove NAME      removes it (deferred if still open)
//! dm_verity version          prints the kernel's device-mapper version
//! ```
//! Errors go to stderr as "VERITY-ERROR: <the whole context chain>", exit 1.

use std::path::Path;

use anyhow::{bail, Context, Result};
use overlay_init::sys::{dm, verity};
use overlay_init::verity::{parse_verity, parse_verity_onerror, OnError};

fn main() {
    if let Err(e) = run() {
        eprintln!("VERITY-ERROR: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["open", name, data, hash, offset, root, rest @ ..] => {
            let on_error = match rest {
                [] => OnError::Eio,
                [mode] => parse_verity_onerror(mode).map_err(anyhow::Error::msg)?,
                _ => bail!("too many arguments"),
            };
            let root_hash = parse_verity(root).map_err(anyhow::Error::msg)?;
            let opened = verity::open(&verity::OpenRequest {
                name,
                data: Path::new(data),
                hash: Path::new(hash),
                hash_offset: match *offset {
                    "auto" => verity::find_appended_tree(Path::new(data))?,
                    offset => offset.parse().context("HASHOFFSET")?,
                },
                root_hash: &root_hash,
                on_error,
            })?;
            let (major, minor) = opened.device.dev_numbers();
            println!(
                "VERITY: open {name} path={} dev={major}:{minor} params={}",
                opened.device.path().display(),
                opened.target.params
            );
            opened.device.keep();
            Ok(())
        }
        ["status", name] => {
            let control = dm::Control::open()?;
            let targets = control.status(name)?;
            let status = targets.first().map(|t| t.params.as_str()).unwrap_or("");
            println!("VERITY: status {name} {status}");
            Ok(())
        }
        ["describe", name] => {
            match verity::describe(name)? {
                Some(state) => println!(
                    "VERITY: describe {name} root={} onerror={} corrupted={}",
                    state.table.root_hash,
                    state.table.on_error.name(),
                    state.corrupted
                ),
                None => println!("VERITY: describe {name} none"),
            }
            Ok(())
        }
        ["remove", name] => {
            dm::Control::open()?.remove(name, false)?;
            let _ = std::fs::remove_file(Path::new("/dev/mapper").join(name));
            println!("VERITY: removed {name}");
            Ok(())
        }
        ["version"] => {
            let (a, b, c) = dm::Control::open()?.version()?;
            println!("VERITY: dm version {a}.{b}.{c}");
            Ok(())
        }
        _ => bail!("usage: see the header of examples/dm_verity.rs"),
    }
}
