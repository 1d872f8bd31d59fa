//! What a dynamically linked program needs to run, read from its ELF headers
//! (as dracut's `inst_binary` does, without running `ldd`): the loader
//! (`PT_INTERP`) and the shared libraries (`DT_NEEDED`), found through
//! `DT_RPATH`/`DT_RUNPATH` and the usual library directories.
//!
//! [`parse`] is pure over the file's bytes; [`resolve`] walks the dependencies
//! through a caller-supplied reader, so tests can run it on any tree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The dynamic-linking facts of one ELF file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElfDeps {
    /// 64-bit (`ELFCLASS64`) or 32-bit.
    pub class64: bool,
    pub little_endian: bool,
    /// `e_machine` (62 = x86-64, 183 = AArch64, ...).
    pub machine: u16,
    /// `PT_INTERP`: the loader, e.g. `/lib64/ld-linux-x86-64.so.2`. None for a
    /// static program or a library.
    pub interpreter: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` directories (ignored by the loader when there is a RUNPATH).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` directories.
    pub runpath: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// Reads fields of the file's class and byte order, bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    class64: bool,
    little: bool,
}

impl Reader<'_> {
    fn get<const N: usize>(&self, offset: u64) -> Result<[u8; N]> {
        let start = usize::try_from(offset).context("offset out of range")?;
        let end = start.checked_add(N).context("offset out of range")?;
        let slice = self.bytes.get(start..end).with_context(|| {
            format!(
                "truncated ELF file (needs {end} bytes, has {})",
                self.bytes.len()
            )
        })?;
        Ok(slice.try_into().expect("slice of N bytes"))
    }

    fn u16(&self, offset: u64) -> Result<u16> {
        let b = self.get::<2>(offset)?;
        Ok(if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32(&self, offset: u64) -> Result<u32> {
        let b = self.get::<4>(offset)?;
        Ok(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn u64(&self, offset: u64) -> Result<u64> {
        let b = self.get::<8>(offset)?;
        Ok(if self.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }

    /// A word: 8 bytes in a 64-bit file, 4 in a 32-bit one.
    fn word(&self, offset: u64) -> Result<u64> {
        if self.class64 {
            self.u64(offset)
        } else {
            self.u32(offset).map(u64::from)
        }
    }

    fn c_string(&self, offset: u64) -> Result<String> {
        let start = usize::try_from(offset).context("string offset out of range")?;
        let rest = self
            .bytes
            .get(start..)
            .context("string past the end of the file")?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .context("string without a terminating NUL")?;
        Ok(String::from_utf8_lossy(&rest[..len]).into_owned())
    }
}

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Read the loader and dynamic dependencies of an ELF file.
pub fn parse(bytes: &[u8]) -> Result<ElfDeps> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        bail!("not an ELF file");
    }
    let class64 = match bytes.get(4) {
        Some(1) => false,
        Some(2) => true,
        other => bail!("ELF class {other:?} unknown"),
    };
    let little = match bytes.get(5) {
        Some(1) => true,
        Some(2) => false,
        other => bail!("ELF byte order {other:?} unknown"),
    };
    let r = Reader {
        bytes,
        class64,
        little,
    };
    let machine = r.u16(18)?;
    let (phoff, phentsize, phnum) = if class64 {
        (r.u64(32)?, r.u16(54)?, r.u16(56)?)
    } else {
        (u64::from(r.u32(28)?), r.u16(42)?, r.u16(44)?)
    };
    let min_entry = if class64 { 56 } else { 32 };
    if phnum > 0 && usize::from(phentsize) < min_entry {
        bail!("ELF program header entries of {phentsize} bytes are too small");
    }
    let mut segments = Vec::new();
    for i in 0..u64::from(phnum) {
        let at = phoff + i * u64::from(phentsize);
        let kind = r.u32(at)?;
        let segment = if class64 {
            Segment {
                kind,
                offset: r.u64(at + 8)?,
                vaddr: r.u64(at + 16)?,
                filesz: r.u64(at + 32)?,
            }
        } else {
            Segment {
                kind,
                offset: u64::from(r.u32(at + 4)?),
                vaddr: u64::from(r.u32(at + 8)?),
                filesz: u64::from(r.u32(at + 16)?),
            }
        };
        segments.push(segment);
    }
    let mut deps = ElfDeps {
        class64,
        little_endian: little,
        machine,
        ..ElfDeps::default()
    };
    if let Some(interp) = segments.iter().find(|s| s.kind == PT_INTERP) {
        deps.interpreter = Some(r.c_string(interp.offset).context("PT_INTERP")?);
    }
    let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) else {
        return Ok(deps); // static
    };
    let entry_size = if class64 { 16 } else { 8 };
    let mut entries = Vec::new();
    let mut strtab_vaddr = None;
    for i in 0..dynamic.filesz / entry_size {
        let at = dynamic.offset + i * entry_size;
        let tag = r.word(at)?;
        let value = r.word(at + entry_size / 2)?;
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab_vaddr = Some(value),
            DT_NEEDED | DT_RPATH | DT_RUNPATH => entries.push((tag, value)),
            _ => {}
        }
    }
    if entries.is_empty() {
        return Ok(deps);
    }
    let strtab_vaddr = strtab_vaddr.context("dynamic section without DT_STRTAB")?;
    let strtab = segments
        .iter()
        .filter(|s| s.kind == PT_LOAD)
        .find(|s| (s.vaddr..s.vaddr.saturating_add(s.filesz)).contains(&strtab_vaddr))
        .map(|s| strtab_vaddr - s.vaddr + s.offset)
        .context("DT_STRTAB lies outside every loaded segment")?;
    for (tag, value) in entries {
        let text = r.c_string(strtab + value).context("dynamic string")?;
        match tag {
            DT_NEEDED => deps.needed.push(text),
            DT_RPATH => deps.rpath.extend(text.split(':').map(String::from)),
            _ => deps.runpath.extend(text.split(':').map(String::from)),
        }
    }
    Ok(deps)
}

/// Debian's multiarch directory for an ELF machine, when known.
fn multiarch(deps: &ElfDeps) -> Option<&'static str> {
    Some(match (deps.machine, deps.class64) {
        (62, true) => "x86_64-linux-gnu",
        (3, false) => "i386-linux-gnu",
        (183, true) => "aarch64-linux-gnu",
        (40, false) => "arm-linux-gnueabihf",
        (243, true) => "riscv64-linux-gnu",
        (8, false) if deps.little_endian => "mipsel-linux-gnu",
        (8, false) => "mips-linux-gnu",
        _ => return None,
    })
}

/// Where the loader looks after RPATH/RUNPATH (and where `ld.so.cache` points on
/// the usual distributions): multiarch directories first, then lib64, then lib.
pub fn library_dirs(deps: &ElfDeps) -> Vec<String> {
    let mut dirs = Vec::new();
    if let Some(triple) = multiarch(deps) {
        dirs.push(format!("/lib/{triple}"));
        dirs.push(format!("/usr/lib/{triple}"));
    }
    if deps.class64 {
        dirs.extend(["/lib64".into(), "/usr/lib64".into()]);
    }
    dirs.extend(["/lib".into(), "/usr/lib".into()]);
    dirs
}

/// One file the program needs, as it goes into the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededFile {
    /// Where it goes (and where the loader will look for it).
    pub path: PathBuf,
    pub data: Vec<u8>,
    /// What needed it: "the program", "the loader of X", "libfoo.so.1 of X".
    pub why: String,
}

/// The program at `path` and everything it needs to run: its loader and its
/// libraries, transitively, each once. `read` returns a file's bytes (following
/// symlinks) or `None` when there is no such file. A library that cannot be
/// found is an error naming it and who needs it.
pub fn resolve(path: &Path, read: impl Fn(&Path) -> Option<Vec<u8>>) -> Result<Vec<NeededFile>> {
    let data = read(path).with_context(|| format!("{} not found", path.display()))?;
    let program = parse(&data).with_context(|| format!("reading {}", path.display()))?;
    let mut out = vec![NeededFile {
        path: path.to_path_buf(),
        data,
        why: "the program".into(),
    }];
    let mut seen_names = BTreeSet::new();
    let mut seen_paths: BTreeSet<PathBuf> = BTreeSet::from([path.to_path_buf()]);
    if let Some(interp) = &program.interpreter {
        let interp_path = PathBuf::from(interp);
        let data = read(&interp_path)
            .with_context(|| format!("the loader {interp} of {} not found", path.display()))?;
        if let Some(name) = interp_path.file_name() {
            // The loader also appears in DT_NEEDED of libc: do not look for it twice.
            seen_names.insert(name.to_string_lossy().into_owned());
        }
        seen_paths.insert(interp_path.clone());
        out.push(NeededFile {
            path: interp_path,
            data,
            why: format!("the loader of {}", path.display()),
        });
    }
    // Breadth-first over (object, its deps, the RPATHs of the objects that
    // loaded it): as glibc, an object without RUNPATH searches its own RPATH,
    // then its loaders' RPATHs, then the usual directories.
    let mut queue = vec![(path.to_path_buf(), program.clone(), Vec::<String>::new())];
    while let Some((object, deps, loader_rpaths)) = queue.pop() {
        let origin = object
            .parent()
            .unwrap_or(Path::new("/"))
            .to_string_lossy()
            .into_owned();
        let expand = |dirs: &[String]| -> Vec<String> {
            dirs.iter()
                .filter(|d| !d.is_empty())
                .map(|d| d.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin))
                .collect()
        };
        let own_rpath = expand(&deps.rpath);
        let mut chain = own_rpath.clone();
        chain.extend(loader_rpaths.iter().cloned());
        let search: Vec<String> = if deps.runpath.is_empty() {
            chain.clone()
        } else {
            expand(&deps.runpath)
        }
        .into_iter()
        .chain(library_dirs(&program))
        .collect();
        for name in &deps.needed {
            if !seen_names.insert(name.clone()) {
                continue;
            }
            let found = if name.contains('/') {
                let candidate = PathBuf::from(name);
                read(&candidate).map(|data| (candidate, data))
            } else {
                search.iter().find_map(|dir| {
                    let candidate = Path::new(dir).join(name);
                    let data = read(&candidate)?;
                    // Skip a library of another architecture, as the loader does.
                    let lib = parse(&data).ok()?;
                    (lib.class64 == program.class64 && lib.machine == program.machine)
                        .then_some((candidate, data))
                })
            };
            let (lib_path, data) = found.with_context(|| {
                format!(
                    "{name} (needed by {}) not found in {}",
                    object.display(),
                    search.join(", ")
                )
            })?;
            let lib = parse(&data).with_context(|| format!("reading {}", lib_path.display()))?;
            if seen_paths.insert(lib_path.clone()) {
                out.push(NeededFile {
                    path: lib_path.clone(),
                    data,
                    why: format!("{name} of {}", object.display()),
                });
            }
            queue.insert(0, (lib_path, lib, chain.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn host(path: &Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    /// A program every Debian host has that links against a few libraries.
    const MKE2FS: &str = "/sbin/mke2fs";

    #[test]
    fn reads_the_loader_and_needed_libraries_of_a_host_binary() {
        let deps = parse(&std::fs::read(MKE2FS).unwrap()).unwrap();
        assert!(deps.class64 && deps.little_endian);
        let interp = deps.interpreter.as_deref().unwrap();
        assert!(
            interp.starts_with('/') && interp.contains("ld-"),
            "{interp}"
        );
        for lib in ["libext2fs.so.2", "libcom_err.so.2", "libc.so.6"] {
            assert!(
                deps.needed.iter().any(|n| n == lib),
                "{lib} in {:?}",
                deps.needed
            );
        }
    }

    #[test]
    fn matches_what_ldd_finds() {
        let files = resolve(Path::new(MKE2FS), host).unwrap();
        assert_eq!(files[0].path, Path::new(MKE2FS));
        let ours: BTreeSet<String> = files[1..]
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let ldd = std::process::Command::new("ldd")
            .arg(MKE2FS)
            .output()
            .unwrap();
        let ldd: BTreeSet<String> = String::from_utf8_lossy(&ldd.stdout)
            .lines()
            .filter(|l| !l.contains("linux-vdso"))
            .filter_map(|l| {
                let path = l.split("=>").last()?.split_whitespace().next()?;
                Some(Path::new(path).file_name()?.to_string_lossy().into_owned())
            })
            .collect();
        assert_eq!(ours, ldd);
        // Each once.
        let paths: BTreeSet<_> = files.iter().map(|f| &f.path).collect();
        assert_eq!(paths.len(), files.len());
    }

    #[test]
    fn a_static_program_needs_nothing() {
        let busybox = std::process::Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&busybox.stdout).trim().to_string();
        let deps = parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(deps.interpreter, None);
        assert!(deps.needed.is_empty());
        assert_eq!(resolve(Path::new(&path), host).unwrap().len(), 1);
    }

    /// A minimal 64-bit little-endian ELF: one PT_LOAD over the whole file, a
    /// PT_DYNAMIC with DT_NEEDED/DT_RUNPATH/DT_RPATH/DT_STRTAB, no loader.
    fn fake_elf(
        machine: u16,
        needed: &[&str],
        runpath: Option<&str>,
        rpath: Option<&str>,
    ) -> Vec<u8> {
        const BASE: u64 = 0x40_0000;
        let mut strtab = vec![0u8];
        let mut add = |s: &str| {
            let at = strtab.len() as u64;
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            at
        };
        let mut dynamic: Vec<(u64, u64)> = needed.iter().map(|n| (DT_NEEDED, add(n))).collect();
        if let Some(r) = runpath {
            dynamic.push((DT_RUNPATH, add(r)));
        }
        if let Some(r) = rpath {
            dynamic.push((DT_RPATH, add(r)));
        }
        let dyn_off = 256u64;
        let str_off = dyn_off + (dynamic.len() as u64 + 2) * 16;
        dynamic.push((DT_STRTAB, BASE + str_off));
        dynamic.push((DT_NULL, 0));
        let mut f = vec![0u8; str_off as usize];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let total = str_off + strtab.len() as u64;
        let phdr = |f: &mut Vec<u8>, at: usize, kind: u32, off: u64, size: u64| {
            f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            f[at + 16..at + 24].copy_from_slice(&(BASE + off).to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
        };
        phdr(&mut f, 64, PT_LOAD, 0, total);
        phdr(&mut f, 120, PT_DYNAMIC, dyn_off, dynamic.len() as u64 * 16);
        for (i, (tag, value)) in dynamic.iter().enumerate() {
            let at = dyn_off as usize + i * 16;
            f[at..at + 8].copy_from_slice(&tag.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&value.to_le_bytes());
        }
        f.extend_from_slice(&strtab);
        f
    }

    #[test]
    fn runpath_origin_rpath_and_the_architecture_are_honoured() {
        let prog = fake_elf(
            62,
            &["libfoo.so.1"],
            Some("$ORIGIN/../lib"),
            Some("/ignored"),
        );
        let parsed = parse(&prog).unwrap();
        assert_eq!(parsed.needed, ["libfoo.so.1"]);
        assert_eq!(parsed.runpath, ["$ORIGIN/../lib"]);
        assert_eq!(parsed.rpath, ["/ignored"]);
        let mut tree: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        tree.insert("/opt/bin/prog".into(), prog);
        // RUNPATH wins over RPATH, so /ignored is never used.
        tree.insert("/ignored/libfoo.so.1".into(), fake_elf(62, &[], None, None));
        tree.insert(
            "/opt/bin/../lib/libfoo.so.1".into(),
            fake_elf(62, &["libbar.so.2"], None, Some("/opt/rpath")),
        );
        tree.insert(
            "/opt/rpath/libbaz.so.3".into(),
            fake_elf(62, &[], None, None),
        );
        // An AArch64 libbar comes first in the search but is skipped.
        tree.insert(
            "/lib/x86_64-linux-gnu/libbar.so.2".into(),
            fake_elf(183, &[], None, None),
        );
        tree.insert(
            "/usr/lib/libbar.so.2".into(),
            fake_elf(62, &["libbaz.so.3"], None, None),
        );
        let files = resolve(Path::new("/opt/bin/prog"), |p| tree.get(p).cloned()).unwrap();
        let paths: Vec<_> = files
            .iter()
            .map(|f| f.path.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "/opt/bin/prog",
                "/opt/bin/../lib/libfoo.so.1",
                "/usr/lib/libbar.so.2",
                // libbar has no RPATH: the RPATH of libfoo, which loaded it, applies.
                "/opt/rpath/libbaz.so.3",
            ]
        );
        assert_eq!(files[2].why, "libbar.so.2 of /opt/bin/../lib/libfoo.so.1");
    }

    #[test]
    fn missing_files_are_named() {
        let program_bytes = std::fs::read(MKE2FS).unwrap();
        let program = parse(&program_bytes).unwrap();
        let mut tree: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        tree.insert("/opt/bin/prog".into(), program_bytes.clone());
        let e = format!(
            "{:#}",
            resolve(Path::new("/opt/bin/prog"), |p| tree.get(p).cloned()).unwrap_err()
        );
        assert!(
            e.contains("the loader") && e.contains("of /opt/bin/prog not found"),
            "{e}"
        );
        let interp = program.interpreter.clone().unwrap();
        tree.insert(interp.clone().into(), host(Path::new(&interp)).unwrap());
        let e = format!(
            "{:#}",
            resolve(Path::new("/opt/bin/prog"), |p| tree.get(p).cloned()).unwrap_err()
        );
        assert!(e.contains("(needed by /opt/bin/prog) not found in"), "{e}");
        let e = format!(
            "{:#}",
            resolve(Path::new("/nowhere"), |_| None).unwrap_err()
        );
        assert_eq!(e, "/nowhere not found");
        let e = format!(
            "{:#}",
            resolve(Path::new("/x"), |_| Some(b"#!/bin/sh\n".to_vec())).unwrap_err()
        );
        assert!(e.contains("not an ELF file"), "{e}");
    }

    #[test]
    fn truncated_files_are_errors_not_panics() {
        let bytes = std::fs::read(MKE2FS).unwrap();
        for len in [0, 4, 6, 20, 63, 64, 100, 1000, 4096] {
            let _ = parse(&bytes[..len.min(bytes.len())]);
        }
        assert!(parse(&bytes[..64]).is_err());
        let mut rng = crate::test_rng::XorShift::new(0xE1F);
        for _ in 0..300 {
            let _ = parse(&rng.mutate(&bytes[..8192], 8192));
        }
    }
}
