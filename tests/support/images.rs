//! Image makers (squashfs, erofs, ext4, GPT disks) and readers (a file out of an ext4 image,
//! a command run on an image mounted read-only in a private mount namespace).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::base::*;

pub fn make_squashfs(dir: &Path, out: &Path) {
    let _ = fs::remove_file(out);
    run(Command::new("mksquashfs").arg(dir).arg(out).args([
        "-noappend",
        "-quiet",
        "-no-progress",
        "-all-root",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
    ]));
}

pub fn make_erofs(dir: &Path, out: &Path) {
    let _ = fs::remove_file(out);
    run(Command::new("mkfs.erofs")
        .args(["--quiet", "--all-root", "-T", "0"])
        .arg(out)
        .arg(dir));
}

/// An ext4 image of `size_mib` MiB, made anew, filled from `from` when given; `extra` goes to
/// mkfs.ext4 (e.g. `["-L", "overlay", "-U", UUID]`). The short form of [`Ext4`].
pub fn make_ext4(out: &Path, size_mib: u64, from: Option<&Path>, extra: &[&str]) {
    let _ = fs::remove_file(out);
    let ext4 = Ext4::mib(size_mib).args(extra);
    match from {
        Some(dir) => ext4.contents(dir),
        None => ext4,
    }
    .write_to(out);
}

/// An ext4 filesystem to write into an image file with `mkfs.ext4`.
pub struct Ext4<'a> {
    size_mib: u64,
    label: Option<&'a str>,
    uuid: Option<&'a str>,
    contents: Option<&'a Path>,
    offset_bytes: u64,
    args: &'a [&'a str],
}

impl<'a> Ext4<'a> {
    pub fn mib(size_mib: u64) -> Self {
        Ext4 {
            size_mib,
            label: None,
            uuid: None,
            contents: None,
            offset_bytes: 0,
            args: &[],
        }
    }

    pub fn label(self, label: &'a str) -> Self {
        Ext4 {
            label: Some(label),
            ..self
        }
    }

    pub fn uuid(self, uuid: &'a str) -> Self {
        Ext4 {
            uuid: Some(uuid),
            ..self
        }
    }

    /// Fill the filesystem from this directory (`mkfs.ext4 -d`).
    pub fn contents(self, dir: &'a Path) -> Self {
        Ext4 {
            contents: Some(dir),
            ..self
        }
    }

    /// More mkfs.ext4 arguments (e.g. `["-O", "^has_journal"]`).
    pub fn args(self, args: &'a [&'a str]) -> Self {
        Ext4 { args, ..self }
    }

    /// Put the filesystem this many bytes into the image (a partition's start).
    /// `mke2fs` clears the start of the file whatever the offset, so write a
    /// partition table after the filesystem.
    pub fn at_offset(self, offset_bytes: u64) -> Self {
        Ext4 {
            offset_bytes,
            ..self
        }
    }

    /// Write the filesystem into `image`, made (or grown) to hold it; a larger
    /// file keeps its size.
    pub fn write_to(self, image: &Path) {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(image)
            .unwrap_or_else(|e| panic!("creating {}: {e}", image.display()));
        let needed = self.offset_bytes + (self.size_mib << 20);
        if file.metadata().unwrap().len() < needed {
            file.set_len(needed).expect("sizing image");
        }
        let mut cmd = Command::new("mkfs.ext4");
        cmd.args(["-q", "-F"]).args(self.args);
        if let Some(label) = self.label {
            cmd.args(["-L", label]);
        }
        if let Some(uuid) = self.uuid {
            cmd.args(["-U", uuid]);
        }
        if let Some(dir) = self.contents {
            cmd.arg("-d").arg(dir);
        }
        // mke2fs keeps only the last -E: one list.
        let mut extended = String::from("root_owner=0:0");
        if self.offset_bytes > 0 {
            extended += &format!(",offset={}", self.offset_bytes);
        }
        cmd.arg("-E").arg(extended);
        run(cmd.arg(image).arg(format!("{}M", self.size_mib)));
    }
}

#[derive(Debug, Clone)]
pub struct GptPartition {
    /// The partition name (PARTLABEL).
    pub name: String,
    pub size_mib: u64,
    /// sgdisk type code; 8300 = Linux filesystem.
    pub type_code: String,
    /// Fixed PARTUUID, or random.
    pub guid: Option<String>,
    /// Written at the start of the partition (must fit).
    pub image: Option<PathBuf>,
}

impl GptPartition {
    pub fn new(name: &str, size_mib: u64, image: Option<&Path>) -> GptPartition {
        GptPartition {
            name: name.into(),
            size_mib,
            type_code: "8300".into(),
            guid: None,
            image: image.map(Path::to_path_buf),
        }
    }
}

/// Where a partition sits in a disk image, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// A GPT disk with the partitions in order (1 MiB aligned), their images copied in.
pub fn make_gpt_disk(out: &Path, partitions: &[GptPartition]) -> Vec<Extent> {
    const MIB: u64 = 1 << 20;
    let total_mib = 2 + partitions.iter().map(|part| part.size_mib).sum::<u64>();
    let _ = fs::remove_file(out);
    fs::File::create(out)
        .unwrap()
        .set_len(total_mib * MIB)
        .unwrap();
    let mut command = Command::new("sgdisk");
    command.arg("--clear");
    let mut extents = Vec::new();
    let mut start_mib = 1;
    for (index, part) in partitions.iter().enumerate() {
        let number = index + 1;
        let first = start_mib * MIB / 512;
        let last = (start_mib + part.size_mib) * MIB / 512 - 1;
        command
            .arg(format!("--new={number}:{first}:{last}"))
            .arg(format!("--change-name={number}:{}", part.name))
            .arg(format!("--typecode={number}:{}", part.type_code));
        if let Some(guid) = &part.guid {
            command.arg(format!("--partition-guid={number}:{guid}"));
        }
        extents.push(Extent {
            offset: start_mib * MIB,
            len: part.size_mib * MIB,
        });
        start_mib += part.size_mib;
    }
    run(command.arg(out));
    for (part, extent) in partitions.iter().zip(&extents) {
        if let Some(image) = &part.image {
            let bytes = fs::read(image).unwrap();
            assert!(
                bytes.len() as u64 <= extent.len,
                "{} does not fit in {}",
                image.display(),
                part.name
            );
            let mut disk = fs::OpenOptions::new().write(true).open(out).unwrap();
            std::io::Seek::seek(&mut disk, std::io::SeekFrom::Start(extent.offset)).unwrap();
            disk.write_all(&bytes).unwrap();
        }
    }
    extents
}

/// Copies a byte range of a disk (a partition) into its own image file.
pub fn extract(disk: &Path, extent: Extent, out: &Path) {
    let mut source = fs::File::open(disk).unwrap();
    std::io::Seek::seek(&mut source, std::io::SeekFrom::Start(extent.offset)).unwrap();
    let mut destination = fs::File::create(out).unwrap();
    let copied = std::io::copy(&mut source.take(extent.len), &mut destination).unwrap();
    assert_eq!(copied, extent.len, "short read from {}", disk.display());
}

/// A copy of an ext4 image with its journal replayed (a guest that powered off without
/// unmounting leaves committed changes in the journal), in `scratch`.
fn replayed_copy(image: &Path, scratch: &Scratch) -> PathBuf {
    let copy = fresh_copy(image, scratch, "replayed.ext4");
    let output = Command::new("e2fsck")
        .args(["-y", "-E", "journal_only"])
        .arg(&copy)
        .stdin(Stdio::null())
        .output()
        .expect("run e2fsck");
    // 0: clean, 1: errors corrected (the journal was replayed).
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "e2fsck -E journal_only {} failed: {}{}",
        image.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    copy
}

/// `extra.sqsh` in `scratch`: a squashfs holding only `/only-in-extra`
/// ("from the extra image"), an `ovl.lower=` layer for tests.
pub fn extra_lower_image(scratch: &Scratch) -> PathBuf {
    let extra_tree = scratch.join("extra");
    write_file(
        &extra_tree.join("only-in-extra"),
        "from the extra image\n",
        0o644,
    );
    let extra = scratch.join("extra.sqsh");
    make_squashfs(&extra_tree, &extra);
    extra
}

/// Reads a file out of an ext4 image without mounting it (debugfs); None when it is absent.
/// The image is not modified.
pub fn ext4_read_file(image: &Path, path: &str) -> Option<Vec<u8>> {
    let output = debugfs(image, &format!("cat {path}"))?;
    assert!(
        output.status.success(),
        "debugfs cat {path} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(output.stdout)
}

/// Runs one debugfs `request` on a journal-replayed copy of `image`; None when
/// debugfs says the path is not found.
fn debugfs(image: &Path, request: &str) -> Option<Output> {
    let scratch = Scratch::new("debugfs");
    let copy = replayed_copy(image, &scratch);
    let output = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(&copy)
        .stdin(Stdio::null())
        .output()
        .expect("run debugfs");
    if String::from_utf8_lossy(&output.stderr).contains("not found") {
        return None;
    }
    Some(output)
}

/// The names in a directory of an ext4 image (without `.` and `..`); None when it is absent.
pub fn ext4_list_dir(image: &Path, dir: &str) -> Option<Vec<String>> {
    let output = debugfs(image, &format!("ls -p {dir}"))?;
    // ls -p: /inode/mode/uid/gid/name/size/
    let names = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split('/').nth(5).map(str::to_owned))
        .filter(|name| !name.is_empty() && name != "." && name != "..")
        .collect();
    Some(names)
}

/// Runs a shell script with `$MNT` = a copy of `image` loop-mounted read-only, in a private
/// mount namespace (`unshare -m`): nothing stays mounted or attached when it returns, and
/// the image itself is not modified. Returns the script's output.
pub fn with_mounted_copy(image: &Path, fstype: &str, script: &str) -> Output {
    let scratch = Scratch::new("mounted");
    let copy = if fstype == "ext4" {
        replayed_copy(image, &scratch)
    } else {
        fresh_copy(image, &scratch, "image")
    };
    let mountpoint = scratch.join("mnt");
    fs::create_dir_all(&mountpoint).unwrap();
    let wrapper = format!(
        "set -e; mount -t {fstype} -o ro,loop \"$IMAGE\" \"$MNT\"; cd \"$MNT\"; set +e\n{script}\n"
    );
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &wrapper,
        ])
        .env("IMAGE", &copy)
        .env("MNT", &mountpoint)
        .stdin(Stdio::null())
        .output()
        .expect("run unshare")
}

/// Reads a file from a read-only mounted copy of an image (any filesystem the host mounts).
pub fn read_mounted(image: &Path, fstype: &str, path: &str) -> Option<Vec<u8>> {
    let output = with_mounted_copy(
        image,
        fstype,
        &format!("cat -- \"$MNT/{}\"", path.trim_start_matches('/')),
    );
    output.status.success().then_some(output.stdout)
}

/// Deterministic incompressible bytes (xorshift), for file contents no compressor shrinks.
pub fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A copy of `image` with one byte flipped at `offset`.
pub fn flipped_copy(image: &Path, offset: usize, out: &Path) {
    let mut bytes = fs::read(image).unwrap();
    bytes[offset] ^= 0x55;
    fs::write(out, bytes).unwrap();
}

/// `veritysetup format DATA HASH EXTRA...` (cryptsetup-bin); returns the root hash it printed.
pub fn veritysetup_format(data: &Path, hash: &Path, extra: &[&str]) -> String {
    root_hash(&run(Command::new("veritysetup")
        .arg("format")
        .arg(data)
        .arg(hash)
        .args(extra)))
}

/// The root hash in `veritysetup format`'s output.
pub fn root_hash(veritysetup_output: &str) -> String {
    veritysetup_output
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .expect("veritysetup printed a root hash")
        .trim()
        .to_string()
}

/// The SHA-256 of a file, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
