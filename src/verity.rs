//! dm-verity over a lower: the parameters, and the plan (pure).
//!
//! `ovl.verity=ROOTHASH` turns verification on for the main lower. The hash
//! tree is on a device of its own (`ovl.verity_hash=SPEC`) or appended to the
//! data device (`ovl.verity_hashoffset=BYTES`, what `veritysetup format
//! --hash-offset` wrote). Everything else (algorithm, block sizes, salt, data
//! block count) comes from the verity superblock ([`crate::probe::verity`]), so
//! the table line below is built from the superblock plus the root hash.
//! An extra lower is verified with `ovl.lower=SPEC@ROOTHASH`
//! ([`parse_lower_entry`]); its tree is appended to it.
//!
//! [`plan_table`] turns a [`VeritySpec`] and the superblock into the verity
//! target's table line; `sys::dm` loads it. Nothing here does I/O.

use std::fmt;

use crate::cmdline::{Config, Problems};
use crate::devspec::DeviceSpec;
use crate::probe::verity::{hex_decode, hex_lower, VeritySuperblock, SUPERBLOCK_BYTES};

/// Kernel modules verification needs (with what they depend on, which the
/// module index lists): loaded on demand, only when a verity parameter is given.
pub const MODULES: &[&str] = &["dm_verity"];

/// The device-mapper name of the verified main lower: `/dev/mapper/ovl-lower`.
pub const MAIN_DM_NAME: &str = "ovl-lower";

/// The device-mapper name of the verified extra lower number `index` (0-based,
/// in `ovl.lower=` order): `ovl-lower-1` for the first.
pub fn extra_dm_name(index: usize) -> String {
    format!("{MAIN_DM_NAME}-{}", index + 1)
}

/// A root hash, as `veritysetup format` prints it (hex).
#[derive(Clone, PartialEq, Eq)]
pub struct RootHash(Vec<u8>);

impl RootHash {
    /// Parse hex digits (either case). The length is checked against the hash
    /// algorithm later, by [`plan_table`], once the superblock is read.
    pub fn parse(hex: &str) -> Result<Self, String> {
        match hex_decode(hex) {
            Some(bytes) if bytes.len() >= MIN_DIGEST_BYTES => Ok(RootHash(bytes)),
            _ => Err(format!(
                "{hex:?} is not a root hash: an even number of hex digits, at least {}",
                2 * MIN_DIGEST_BYTES
            )),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Lower-case hex, as on the table line and in `veritysetup` output.
impl fmt::Display for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_lower(&self.0))
    }
}

impl fmt::Debug for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootHash({self})")
    }
}

/// The shortest digest accepted (sha1's is 20 bytes; md5 is not offered).
const MIN_DIGEST_BYTES: usize = 20;

/// Digest size of the hash algorithms images are made with (`veritysetup`'s
/// default sha256, and sha1, sha512), to check a root hash's length before
/// the kernel does (its error would only say "Invalid root digest" in the
/// kernel log). `None` for any other name: the kernel then checks.
pub fn digest_bytes(algorithm: &str) -> Option<usize> {
    Some(match algorithm {
        "sha256" => 32,
        "sha1" => 20,
        "sha512" => 64,
        _ => return None,
    })
}

/// What dm-verity does when a block does not match its hash
/// (`ovl.verity_onerror=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// The reader gets EIO (dm-verity's default); the system stays up.
    #[default]
    Eio,
    /// `restart_on_corruption`: the kernel restarts the machine.
    Restart,
    /// `panic_on_corruption`: the kernel panics (`panic=` decides what then).
    Panic,
}

impl OnError {
    pub const ACCEPTED: &'static str = "eio, restart or panic";

    /// The optional table argument, if any.
    pub fn table_arg(self) -> Option<&'static str> {
        match self {
            OnError::Eio => None,
            OnError::Restart => Some("restart_on_corruption"),
            OnError::Panic => Some("panic_on_corruption"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OnError::Eio => "eio",
            OnError::Restart => "restart",
            OnError::Panic => "panic",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command-line values. Each parser returns an error naming its parameter, ready
// for the cmdline table.

/// `ovl.verity=ROOTHASH`.
pub fn parse_verity(value: &str) -> Result<RootHash, String> {
    RootHash::parse(value).map_err(|e| {
        format!("ovl.verity=: {e}; expected the hex root hash `veritysetup format` printed")
    })
}

/// `ovl.verity_hash=SPEC`: the device holding the hash tree, named as for `root=`.
pub fn parse_verity_hash(value: &str) -> Result<DeviceSpec, String> {
    DeviceSpec::parse(value).map_err(|e| format!("ovl.verity_hash=: {e}"))
}

/// `ovl.verity_hashoffset=BYTES`: where the hash area (its superblock) starts,
/// in bytes, as given to `veritysetup format --hash-offset`. A multiple of 512.
pub fn parse_verity_hashoffset(value: &str) -> Result<u64, String> {
    let bytes: u64 = value.parse().map_err(|_| {
        format!("ovl.verity_hashoffset=: {value:?} is not a number of bytes (like 134217728)")
    })?;
    if !bytes.is_multiple_of(512) {
        return Err(format!(
            "ovl.verity_hashoffset=: {bytes} is not a multiple of 512"
        ));
    }
    Ok(bytes)
}

/// `ovl.verity_onerror=eio|restart|panic`.
pub fn parse_verity_onerror(value: &str) -> Result<OnError, String> {
    match value {
        "eio" => Ok(OnError::Eio),
        "restart" => Ok(OnError::Restart),
        "panic" => Ok(OnError::Panic),
        _ => Err(format!(
            "ovl.verity_onerror=: {value:?} is not known; accepted: {}",
            OnError::ACCEPTED
        )),
    }
}

/// One entry of `ovl.lower=`: `SPEC` or `SPEC@ROOTHASH`. The text after the
/// last `@` is the root hash; an entry with an `@` whose tail is not a root hash
/// is an error (never silently an unverified lower). Returns the SPEC text, for
/// the `ovl.lower=` parser, and the root hash if any.
pub fn parse_lower_entry(entry: &str) -> Result<(&str, Option<RootHash>), String> {
    // A byte search: `rsplit_once` would link a second memrchr for one call.
    let Some(at) = entry.bytes().rposition(|b| b == b'@') else {
        return Ok((entry, None));
    };
    let (spec, hash) = (&entry[..at], &entry[at + 1..]);
    if spec.is_empty() {
        return Err(format!(
            "ovl.lower=: {entry:?} has a root hash but no device or file"
        ));
    }
    let hash = RootHash::parse(hash)
        .map_err(|e| format!("ovl.lower=: in {entry:?}, after the last '@': {e}"))?;
    Ok((spec, Some(hash)))
}

/// The four `ovl.verity*` parameters as given, before [`VerityConfig::from_params`]
/// combines them (in `cmdline::check_conflicts`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Params {
    pub root_hash: Option<RootHash>,
    pub hash: Option<DeviceSpec>,
    pub hash_offset: Option<u64>,
    pub on_error: Option<OnError>,
}

// The `cmdline::OVL_PARAMS` parsers. A bad value of a parameter that asks for
// verification is fatal: booting unverified is not a safe default.

pub fn ovl_verity(c: &mut Config, v: Option<&str>, p: &mut Problems<'_>) {
    match parse_verity(v.unwrap_or_default()) {
        Ok(h) => c.verity_params.root_hash = Some(h),
        Err(e) => p.fatal(e),
    }
}

pub fn ovl_verity_hash(c: &mut Config, v: Option<&str>, p: &mut Problems<'_>) {
    match parse_verity_hash(v.unwrap_or_default()) {
        Ok(d) => c.verity_params.hash = Some(d),
        Err(e) => p.fatal(e),
    }
}

pub fn ovl_verity_hashoffset(c: &mut Config, v: Option<&str>, p: &mut Problems<'_>) {
    match parse_verity_hashoffset(v.unwrap_or_default()) {
        Ok(o) => c.verity_params.hash_offset = Some(o),
        Err(e) => p.fatal(e),
    }
}

pub fn ovl_verity_onerror(c: &mut Config, v: Option<&str>, p: &mut Problems<'_>) {
    match parse_verity_onerror(v.unwrap_or_default()) {
        Ok(o) => c.verity_params.on_error = Some(o),
        // eio is the mode that keeps the system up: the safe default.
        Err(e) => p.warn(format!("{e}; using eio")),
    }
}

/// Combine the `ovl.verity*` parameters into `config.verity`; `Err` is fatal.
pub fn resolve(config: &mut Config) -> Result<(), String> {
    let p = std::mem::take(&mut config.verity_params);
    config.verity = VerityConfig::from_params(p.root_hash, p.hash, p.hash_offset, p.on_error)?;
    Ok(())
}

/// Verification of the main lower, from the `ovl.verity*` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityConfig {
    pub root_hash: RootHash,
    /// `ovl.verity_hash=`: `None` means the tree is on the data device.
    pub hash_device: Option<DeviceSpec>,
    /// Where the superblock is on the hash device (or the data device).
    pub hash_offset: u64,
    pub on_error: OnError,
}

impl VerityConfig {
    /// Combine the four parameters (each already parsed), rejecting
    /// combinations that cannot work. `Ok(None)` when verity is off.
    pub fn from_params(
        verity: Option<RootHash>,
        hash: Option<DeviceSpec>,
        hash_offset: Option<u64>,
        on_error: Option<OnError>,
    ) -> Result<Option<Self>, String> {
        let Some(root_hash) = verity else {
            // Named one at a time: the first found.
            let given = if hash.is_some() {
                "ovl.verity_hash="
            } else if hash_offset.is_some() {
                "ovl.verity_hashoffset="
            } else if on_error.is_some() {
                "ovl.verity_onerror="
            } else {
                return Ok(None);
            };
            return Err(format!(
                "{given} given without ovl.verity=ROOTHASH, which turns verification on"
            ));
        };
        if hash.is_none() && hash_offset.is_none() {
            return Err(
                "ovl.verity= needs ovl.verity_hash=SPEC or ovl.verity_hashoffset=BYTES \
                 (where the hash tree is)"
                    .into(),
            );
        }
        if hash_offset == Some(0) && hash.is_none() {
            return Err(
                "ovl.verity_hashoffset=0 without ovl.verity_hash= puts the hash tree \
                 on the lower's data"
                    .into(),
            );
        }
        Ok(Some(VerityConfig {
            root_hash,
            hash_device: hash,
            hash_offset: hash_offset.unwrap_or(0),
            on_error: on_error.unwrap_or_default(),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// The plan

/// One verified device, with its devices found: what the table line needs
/// besides the superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeritySpec {
    /// The data device as the kernel table takes it: a path or `MAJOR:MINOR`.
    pub data_device: String,
    /// The hash device, the same string as `data_device` for an appended tree.
    pub hash_device: String,
    /// Byte offset of the superblock on the hash device.
    pub hash_offset: u64,
    pub root_hash: RootHash,
    pub on_error: OnError,
}

/// The dm table of the verified device: one `verity` target over all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTable {
    /// Length of the target in 512-byte sectors.
    pub sectors: u64,
    /// The target's parameters (everything after `0 LENGTH verity` in `dmsetup table`).
    pub params: String,
}

/// The target type name for [`VerityTable`].
pub const TARGET_TYPE: &str = "verity";

/// The first hash block of the tree, in hash blocks from the start of the hash
/// device: the block after the superblock (cryptsetup's
/// `VERITY_hash_offset_block`).
pub fn hash_start_block(hash_offset: u64, hash_block_size: u32) -> u64 {
    (hash_offset + SUPERBLOCK_BYTES as u64).div_ceil(u64::from(hash_block_size))
}

/// The table line of dm-verity (version 1 format; the hash offset is a
/// multiple of 512, as `parse_verity_hashoffset` and `appended_hash_offset`
/// give it; the devices are paths or `MAJOR:MINOR`, as `dm_get_device` takes them;
/// see the kernel's
/// `Documentation/admin-guide/device-mapper/verity.rst`):
///
/// `<version> <dev> <hash_dev> <data_block_size> <hash_block_size>
/// <num_data_blocks> <hash_start_block> <algorithm> <digest> <salt>
/// [<#opt_params> <opt_params>]`
pub fn plan_table(spec: &VeritySpec, sb: &VeritySuperblock) -> Result<VerityTable, String> {
    if let Some(expected) = digest_bytes(&sb.algorithm) {
        let got = spec.root_hash.as_bytes().len();
        if got != expected {
            return Err(format!(
                "root hash {} has {} hex digits, but the hash tree on {} uses {} \
                 ({} hex digits)",
                spec.root_hash,
                2 * got,
                spec.hash_device,
                sb.algorithm,
                2 * expected
            ));
        }
    }
    let salt = if sb.salt.is_empty() {
        "-".to_string()
    } else {
        hex_lower(&sb.salt)
    };
    let mut params = format!(
        "{} {} {} {} {} {} {} {} {} {}",
        sb.hash_type,
        spec.data_device,
        spec.hash_device,
        sb.data_block_size,
        sb.hash_block_size,
        sb.data_blocks,
        hash_start_block(spec.hash_offset, sb.hash_block_size),
        sb.algorithm,
        spec.root_hash,
        salt
    );
    if let Some(arg) = spec.on_error.table_arg() {
        params.push_str(" 1 ");
        params.push_str(arg);
    }
    Ok(VerityTable {
        sectors: sb.data_bytes() / 512,
        params,
    })
}

/// What a live verity table says (from its parameters, as [`plan_table`]
/// wrote them and the kernel reports them back): for `overlay-init status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTable {
    /// `MAJOR:MINOR` (the kernel reports devices by number).
    pub data_device: String,
    pub hash_device: String,
    pub algorithm: String,
    pub root_hash: RootHash,
    pub on_error: OnError,
}

/// Parse the parameters of a `verity` target (version 0 or 1 format).
pub fn parse_table_params(params: &str) -> Option<LiveTable> {
    let fields: Vec<&str> = params.split_whitespace().collect();
    let [version, data, hash, _, _, _, _, algorithm, digest, _salt, optional @ ..] =
        fields.as_slice()
    else {
        return None;
    };
    if !matches!(*version, "0" | "1") {
        return None;
    }
    let on_error = if optional.contains(&"panic_on_corruption") {
        OnError::Panic
    } else if optional.contains(&"restart_on_corruption") {
        OnError::Restart
    } else {
        OnError::Eio
    };
    Some(LiveTable {
        data_device: data.to_string(),
        hash_device: hash.to_string(),
        algorithm: algorithm.to_string(),
        root_hash: RootHash::parse(digest).ok()?,
        on_error,
    })
}

/// Check the superblock's data area against the devices' sizes (bytes), so a
/// mismatch is reported by name before the kernel fails with a bare EINVAL or
/// an I/O error at the end of the device.
pub fn check_sizes(
    spec: &VeritySpec,
    sb: &VeritySuperblock,
    data_device_bytes: u64,
    hash_device_bytes: u64,
) -> Result<(), String> {
    let data = sb.data_bytes();
    if data > data_device_bytes {
        return Err(format!(
            "the verity superblock on {} covers {data} bytes of data, but {} has only {data_device_bytes}",
            spec.hash_device, spec.data_device
        ));
    }
    if spec.hash_device == spec.data_device && data > spec.hash_offset {
        return Err(format!(
            "the verity data area of {} ({data} bytes) overlaps its hash area at {}",
            spec.data_device, spec.hash_offset
        ));
    }
    // One data block has no tree: its hash is the root hash (the kernel's
    // levels = 0), so the hash area may end right after the superblock.
    let tree_block = if sb.data_blocks > 1 {
        u64::from(sb.hash_block_size)
    } else {
        0
    };
    let tree_end = hash_start_block(spec.hash_offset, sb.hash_block_size)
        * u64::from(sb.hash_block_size)
        + tree_block;
    if tree_end > hash_device_bytes {
        return Err(format!(
            "{} ends at {hash_device_bytes} bytes, before its hash tree does ({tree_end})",
            spec.hash_device
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::verity::read;
    use std::io::Write;
    use std::process::{Command, Stdio};

    const SEPARATE: &[u8] = include_bytes!("../tests/fixtures/verity/separate.img");
    const SEPARATE_DATA: &[u8] = include_bytes!("../tests/fixtures/verity/separate-data.img");
    const APPENDED: &[u8] = include_bytes!("../tests/fixtures/verity/appended.img");
    const APPENDED_ODD: &[u8] = include_bytes!("../tests/fixtures/verity/appended-odd.img");
    const SEPARATE_ROOT: &str = include_str!("../tests/fixtures/verity/separate.roothash");
    const APPENDED_ROOT: &str = include_str!("../tests/fixtures/verity/appended.roothash");
    const ODD_ROOT: &str = include_str!("../tests/fixtures/verity/appended-odd.roothash");
    const SALT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn root(text: &str) -> RootHash {
        RootHash::parse(text.trim()).unwrap()
    }

    fn spec(data: &str, hash: &str, offset: u64, root_hash: RootHash) -> VeritySpec {
        VeritySpec {
            data_device: data.into(),
            hash_device: hash.into(),
            hash_offset: offset,
            root_hash,
            on_error: OnError::Eio,
        }
    }

    /// `sha1sum`/`sha256sum` (coreutils) of `bytes`: an independent hash to
    /// check the tree position the plan computes.
    fn digest(algorithm: &str, bytes: &[u8]) -> String {
        let mut child = Command::new(format!("{algorithm}sum"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("coreutils");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..digest_bytes(algorithm).unwrap() * 2].to_string()
    }

    /// With 4 data blocks the tree is one hash block, and the root hash is the
    /// salted hash of that block: finding it at `hash_start_block` proves the
    /// plan points the kernel at the tree veritysetup wrote.
    fn assert_root_block(image: &[u8], offset: u64, root_hash: &str) {
        let sb = read(&image[offset as usize..]).unwrap().unwrap();
        let block =
            (hash_start_block(offset, sb.hash_block_size) * u64::from(sb.hash_block_size)) as usize;
        let mut salted = sb.salt.clone();
        salted.extend_from_slice(&image[block..block + sb.hash_block_size as usize]);
        assert_eq!(digest(&sb.algorithm, &salted), root_hash.trim());
    }

    #[test]
    fn table_for_a_separate_hash_device() {
        let sb = read(SEPARATE).unwrap().unwrap();
        let table = plan_table(&spec("/dev/vda", "/dev/vdb", 0, root(SEPARATE_ROOT)), &sb).unwrap();
        assert_eq!(table.sectors, 32);
        assert_eq!(
            table.params,
            format!(
                "1 /dev/vda /dev/vdb 4096 4096 4 1 sha256 {} {SALT}",
                SEPARATE_ROOT.trim()
            )
        );
        assert_root_block(SEPARATE, 0, SEPARATE_ROOT);
        assert!(check_sizes(
            &spec("/dev/vda", "/dev/vdb", 0, root(SEPARATE_ROOT)),
            &sb,
            SEPARATE_DATA.len() as u64,
            SEPARATE.len() as u64
        )
        .is_ok());
    }

    #[test]
    fn table_for_an_appended_tree_counts_the_superblock() {
        let sb = read(&APPENDED[16384..]).unwrap().unwrap();
        let mut s = spec("7:0", "7:0", 16384, root(APPENDED_ROOT));
        s.on_error = OnError::Restart;
        let table = plan_table(&s, &sb).unwrap();
        // 16384 + 512 bytes of superblock, rounded up to 4096-byte blocks: 5.
        assert_eq!(
            table.params,
            format!(
                "1 7:0 7:0 4096 4096 4 5 sha256 {} {SALT} 1 restart_on_corruption",
                APPENDED_ROOT.trim()
            )
        );
        assert_root_block(APPENDED, 16384, APPENDED_ROOT);
        check_sizes(&s, &sb, APPENDED.len() as u64, APPENDED.len() as u64).unwrap();

        // An offset that is not a hash-block multiple, 1 KiB hash blocks, sha1, no salt.
        let sb = read(&APPENDED_ODD[16896..]).unwrap().unwrap();
        let mut s = spec("/dev/loop3", "/dev/loop3", 16896, root(ODD_ROOT));
        s.on_error = OnError::Panic;
        let table = plan_table(&s, &sb).unwrap();
        assert_eq!(
            table.params,
            format!(
                "1 /dev/loop3 /dev/loop3 4096 1024 4 17 sha1 {} - 1 panic_on_corruption",
                ODD_ROOT.trim()
            )
        );
        assert_root_block(APPENDED_ODD, 16896, ODD_ROOT);
    }

    #[test]
    fn live_table_parameters_read_back() {
        let sb = read(&APPENDED[16384..]).unwrap().unwrap();
        for on_error in [OnError::Eio, OnError::Restart, OnError::Panic] {
            let mut s = spec("7:0", "7:1", 16384, root(APPENDED_ROOT));
            s.on_error = on_error;
            let live = parse_table_params(&plan_table(&s, &sb).unwrap().params).unwrap();
            assert_eq!(live.root_hash, root(APPENDED_ROOT));
            assert_eq!(
                (live.data_device.as_str(), live.hash_device.as_str()),
                ("7:0", "7:1")
            );
            assert_eq!(live.algorithm, "sha256");
            assert_eq!(live.on_error, on_error);
        }
        assert_eq!(parse_table_params("0 7:0 7:0 4096 4096 4"), None);
        assert_eq!(
            parse_table_params("2 a b 1 1 1 1 sha256 abcdabcdabcdabcdabcdabcdabcdabcdabcdabcd -"),
            None
        );
    }

    #[test]
    fn plan_rejects_what_the_kernel_would_refuse_without_saying_why() {
        let sb = read(SEPARATE).unwrap().unwrap();
        let short = RootHash::parse(ODD_ROOT.trim()).unwrap(); // a sha1 hash for a sha256 tree
        let error = plan_table(&spec("/dev/vda", "/dev/vdb", 0, short), &sb).unwrap_err();
        assert!(
            error.contains("40 hex digits") && error.contains("sha256"),
            "{error}"
        );
        assert!(error.contains("/dev/vdb"), "{error}");

        let s = spec("/dev/vda", "/dev/vdb", 0, root(SEPARATE_ROOT));
        let error = check_sizes(&s, &sb, 16383, 8192).unwrap_err();
        assert!(error.contains("/dev/vda has only 16383"), "{error}");
        let error = check_sizes(&s, &sb, 16384, 4096).unwrap_err();
        assert!(error.contains("/dev/vdb ends at 4096"), "{error}");
        let s = spec("/dev/vda", "/dev/vda", 8192, root(SEPARATE_ROOT));
        let error = check_sizes(&s, &sb, 1 << 20, 1 << 20).unwrap_err();
        assert!(error.contains("overlaps"), "{error}");
    }

    #[test]
    fn root_hash_parsing() {
        let hash = parse_verity(&SEPARATE_ROOT.trim().to_ascii_uppercase()).unwrap();
        assert_eq!(hash.to_string(), SEPARATE_ROOT.trim());
        assert_eq!(hash.as_bytes().len(), 32);
        for (bad, says) in [
            ("", "not a root hash"),
            ("xyz", "not a root hash"),
            ("abc", "not a root hash"),
            ("abcd", "at least 40"),
            (&"+0".repeat(20), "hex digits"),
            (&"é".repeat(20), "hex digits"),
        ] {
            let error = parse_verity(bad).unwrap_err();
            assert!(error.starts_with("ovl.verity=: "), "{error}");
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn parameter_values_are_checked_by_name() {
        assert_eq!(
            parse_verity_hash("PARTLABEL=hash").unwrap(),
            DeviceSpec::PartLabel("hash".into())
        );
        assert!(parse_verity_hash("vdb")
            .unwrap_err()
            .starts_with("ovl.verity_hash=: "));
        assert_eq!(parse_verity_hashoffset("134217728").unwrap(), 134217728);
        let error = parse_verity_hashoffset("1000").unwrap_err();
        assert!(
            error.contains("ovl.verity_hashoffset=") && error.contains("512"),
            "{error}"
        );
        assert!(parse_verity_hashoffset("128M")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_verity_hashoffset("-512").is_err());
        assert_eq!(parse_verity_onerror("eio").unwrap(), OnError::Eio);
        assert_eq!(parse_verity_onerror("restart").unwrap(), OnError::Restart);
        assert_eq!(parse_verity_onerror("panic").unwrap(), OnError::Panic);
        let error = parse_verity_onerror("reboot").unwrap_err();
        assert!(error.contains("ovl.verity_onerror=") && error.contains("eio, restart or panic"));
    }

    #[test]
    fn lower_entries_with_and_without_root_hash() {
        let hash = SEPARATE_ROOT.trim();
        assert_eq!(parse_lower_entry("/dev/vdc").unwrap(), ("/dev/vdc", None));
        let entry = format!("LABEL=apps@{hash}");
        let (spec, got) = parse_lower_entry(&entry).unwrap();
        assert_eq!((spec, got), ("LABEL=apps", Some(root(hash))));
        // Only the last '@' separates.
        let entry = format!("/data/a@b.img@{hash}");
        let (spec, got) = parse_lower_entry(&entry).unwrap();
        assert_eq!((spec, got.is_some()), ("/data/a@b.img", true));
        let error = parse_lower_entry("/data/a@b.img").unwrap_err();
        assert!(
            error.starts_with("ovl.lower=: ") && error.contains("after the last '@'"),
            "{error}"
        );
        assert!(parse_lower_entry(&format!("@{hash}"))
            .unwrap_err()
            .contains("no device"));
    }

    #[test]
    fn parameter_combinations() {
        let hash = || Some(root(SEPARATE_ROOT));
        let vdb = || Some(DeviceSpec::Path("/dev/vdb".into()));
        assert_eq!(VerityConfig::from_params(None, None, None, None), Ok(None));
        let config = VerityConfig::from_params(hash(), vdb(), None, None)
            .unwrap()
            .unwrap();
        assert_eq!((config.hash_offset, config.on_error), (0, OnError::Eio));
        let config = VerityConfig::from_params(hash(), None, Some(4096), Some(OnError::Panic))
            .unwrap()
            .unwrap();
        assert_eq!(config.hash_device, None);
        assert_eq!(config.on_error, OnError::Panic);
        let error = VerityConfig::from_params(None, vdb(), Some(512), None).unwrap_err();
        assert!(
            error.contains("ovl.verity_hash= given without ovl.verity="),
            "{error}"
        );
        let error = VerityConfig::from_params(hash(), None, None, None).unwrap_err();
        assert!(error.contains("ovl.verity_hash=SPEC"), "{error}");
        let error = VerityConfig::from_params(hash(), None, Some(0), None).unwrap_err();
        assert!(error.contains("ovl.verity_hashoffset=0"), "{error}");
        assert!(VerityConfig::from_params(hash(), vdb(), Some(0), None).is_ok());
    }

    #[test]
    fn dm_names() {
        assert_eq!(MAIN_DM_NAME, "ovl-lower");
        assert_eq!(extra_dm_name(0), "ovl-lower-1");
    }
}
