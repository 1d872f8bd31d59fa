//! The architecture an ELF file (the init, a kernel module) is built for, read from its
//! header, so the builder refuses an initramfs whose modules the init's kernel cannot load:
//! an x86_64 init with an arm64 module tree (or the reverse) boots to "no root device"
//! with nothing on the console to say why.
//!
//! Pure over bytes: `e_ident[EI_CLASS]` (32/64-bit), `e_ident[EI_DATA]` (endianness) and
//! `e_machine` (offset 0x12, in the file's own byte order).

use anyhow::{bail, Result};
use std::fmt;
use std::path::Path;

pub const EM_386: u16 = 3;
pub const EM_MIPS: u16 = 8;
pub const EM_ARM: u16 = 40;
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;
pub const EM_RISCV: u16 = 243;

/// What an ELF header says about the machine a file runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfArch {
    pub machine: u16,
    pub is_64bit: bool,
    pub big_endian: bool,
}

impl ElfArch {
    /// The architecture of an ELF file; `None` when `bytes` is not ELF (a script as init, say)
    /// or too short to hold the header fields read here.
    pub fn of(bytes: &[u8]) -> Option<ElfArch> {
        if bytes.get(..4)? != b"\x7fELF" {
            return None;
        }
        let is_64bit = match bytes.get(4)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let big_endian = match bytes.get(5)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let raw: [u8; 2] = bytes.get(0x12..0x14)?.try_into().ok()?;
        let machine = if big_endian {
            u16::from_be_bytes(raw)
        } else {
            u16::from_le_bytes(raw)
        };
        Some(ElfArch {
            machine,
            is_64bit,
            big_endian,
        })
    }

    /// The usual name of the machine (`x86_64`, `aarch64`, `arm`, ...).
    pub fn name(&self) -> String {
        match (self.machine, self.is_64bit) {
            (EM_X86_64, _) => "x86_64".into(),
            (EM_AARCH64, _) => "aarch64".into(),
            (EM_ARM, _) => "arm".into(),
            (EM_386, _) => "i386".into(),
            (EM_MIPS, false) => "mips".into(),
            (EM_MIPS, true) => "mips64".into(),
            (EM_RISCV, true) => "riscv64".into(),
            (EM_RISCV, false) => "riscv32".into(),
            (other, _) => format!("ELF machine {other}"),
        }
    }
}

impl fmt::Display for ElfArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}-bit {})",
            self.name(),
            if self.is_64bit { 64 } else { 32 },
            if self.big_endian {
                "big-endian"
            } else {
                "little-endian"
            }
        )
    }
}

/// The modules the builder adds by default for an init of `arch` (`None`: the init is not
/// ELF, so the architecture is unknown): [`DEFAULT_MODULES`](super::resolve::DEFAULT_MODULES),
/// and on aarch64 `virtio_mmio` as well. QEMU's arm64 `virt` board carries virtio disks on
/// two transports: its PCIe host (`pci-host-generic`, built into Debian's arm64 kernels; the
/// `virtio-blk-pci` disks `qemu/run` attaches, as on x86_64) and 32 virtio-mmio slots
/// (`-device virtio-blk-device`, what most arm64 QEMU guides use). Both are modules in
/// Debian's arm64 kernel, and `virtio_mmio` is 22 KiB.
pub fn default_modules(arch: Option<ElfArch>) -> Vec<&'static str> {
    let mut modules = super::resolve::DEFAULT_MODULES.to_vec();
    if arch.is_some_and(|arch| arch.machine == EM_AARCH64) {
        modules.insert(0, "virtio_mmio");
    }
    modules
}

/// Fails when a module is built for another architecture than the init: the init's
/// kernel could not load it, so the initramfs would not boot.
pub fn check_module(
    init: &Path,
    init_arch: ElfArch,
    tree: &Path,
    module: &str,
    module_bytes: &[u8],
) -> Result<()> {
    let Some(module_arch) = ElfArch::of(module_bytes) else {
        bail!("module {module} in {} is not an ELF file", tree.display());
    };
    if module_arch != init_arch {
        bail!(
            "the module tree {} is for {module_arch} (module {module}) but the init {} is for {init_arch}: \
             use the module tree of the kernel this init boots (qemu/fetch-kernel --arch {} prints it), \
             or build the init for {} (initramfs/build --arch {} ...)",
            tree.display(),
            init.display(),
            init_arch.name(),
            module_arch.name(),
            module_arch.name(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF header prefix: magic, class, data, version, padding, e_type, e_machine.
    fn header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut bytes = b"\x7fELF".to_vec();
        bytes.extend([class, data, 1]);
        bytes.resize(0x10, 0);
        bytes.extend(if data == 2 {
            1u16.to_be_bytes()
        } else {
            1u16.to_le_bytes()
        });
        bytes.extend(if data == 2 {
            machine.to_be_bytes()
        } else {
            machine.to_le_bytes()
        });
        bytes.resize(64, 0);
        bytes
    }

    #[test]
    fn reads_class_endianness_and_machine() {
        let x86 = ElfArch::of(&header(2, 1, EM_X86_64)).unwrap();
        assert_eq!(x86.to_string(), "x86_64 (64-bit little-endian)");
        let arm64 = ElfArch::of(&header(2, 1, EM_AARCH64)).unwrap();
        assert_eq!(arm64.name(), "aarch64");
        let armv7 = ElfArch::of(&header(1, 1, EM_ARM)).unwrap();
        assert_eq!(armv7.to_string(), "arm (32-bit little-endian)");
        // e_machine is in the file's byte order: big-endian MIPS reads as MIPS.
        let mips = ElfArch::of(&header(1, 2, EM_MIPS)).unwrap();
        assert_eq!(mips.to_string(), "mips (32-bit big-endian)");
        assert_eq!(
            ElfArch::of(&header(2, 1, 999)).unwrap().name(),
            "ELF machine 999"
        );
    }

    #[test]
    fn arm64_defaults_add_the_virtio_mmio_transport() {
        let common = super::super::resolve::DEFAULT_MODULES.to_vec();
        let x86 = ElfArch::of(&header(2, 1, EM_X86_64));
        assert_eq!(default_modules(x86), common);
        assert_eq!(default_modules(None), common);
        let arm64 = default_modules(ElfArch::of(&header(2, 1, EM_AARCH64)));
        assert!(arm64.contains(&"virtio_mmio") && arm64.contains(&"virtio_pci"));
        assert_eq!(arm64.len(), common.len() + 1);
    }

    #[test]
    fn not_elf_or_truncated_is_none() {
        assert_eq!(ElfArch::of(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(ElfArch::of(b"\x7fELF\x02\x01"), None);
        assert_eq!(ElfArch::of(&header(2, 1, EM_AARCH64)[..0x13]), None);
        assert_eq!(ElfArch::of(&header(3, 1, EM_AARCH64)), None);
        assert_eq!(ElfArch::of(&header(2, 0, EM_AARCH64)), None);
    }

    #[test]
    fn a_module_of_another_architecture_is_refused_naming_both() {
        let init = ElfArch::of(&header(2, 1, EM_X86_64)).unwrap();
        let error = check_module(
            Path::new("/t/overlay-init"),
            init,
            Path::new("/k/lib/modules/6.1-arm64"),
            "virtio_blk",
            &header(2, 1, EM_AARCH64),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(
                "the module tree /k/lib/modules/6.1-arm64 is for aarch64 (64-bit little-endian) \
                 (module virtio_blk) but the init /t/overlay-init is for x86_64 (64-bit little-endian)"
            ),
            "{error}"
        );
        assert!(error.contains("initramfs/build --arch aarch64"), "{error}");
        assert!(check_module(
            Path::new("/t/overlay-init"),
            init,
            Path::new("/k"),
            "virtio_blk",
            &header(2, 1, EM_X86_64)
        )
        .is_ok());
        let not_elf = check_module(Path::new("/i"), init, Path::new("/k"), "bad", b"junk");
        assert!(not_elf
            .unwrap_err()
            .to_string()
            .contains("module bad in /k is not an ELF file"));
    }
}
