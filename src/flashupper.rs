//! What to do with a flash upper before mounting it: pure decisions over what
//! was read from the flash (`sys::mtd`, `sys::ubi` do the reading and writing).
//!
//! **JFFS2 on an MTD partition** (`ovl.upper=mtd:NAME`). JFFS2 needs no mkfs:
//! an erased partition (all `0xFF`) mounts as an empty filesystem. OpenWrt's
//! sysupgrade leaves `deadc0de` at the start of `rootfs_data` to say "erase me
//! on first boot"; a partition that starts with it, or that is blank in the
//! block-device sense (zeroed), or that only has data in its first erase block
//! (our erase, which does block 0 last, cut short), is erased with
//! `ovl.format=blank`. One that starts with a JFFS2 node or an erased block is
//! mounted as it is. Anything else (a UBI device, another filesystem, data) is
//! never written.
//!
//! **UBIFS on a UBI volume** (`ovl.upper=ubiN:NAME`). UBIFS needs no mkfs
//! either: it formats an empty volume at its first read-write mount. A device
//! without the volume gets it (all the free space) with `ovl.format=blank`; a
//! volume that holds something else than UBIFS is never written.

use crate::probe::blank::{classify, edge_ranges, BlankKind, Classification, Edges, DEADC0DE};
use crate::upperparams::FormatPolicy;

/// JFFS2's node magic (`JFFS2_MAGIC_BITMASK`), either byte order.
const JFFS2_MAGIC_LE: [u8; 2] = [0x85, 0x19];
const JFFS2_MAGIC_BE: [u8; 2] = [0x19, 0x85];
/// A UBI erase-counter header (`UBI_EC_HDR_MAGIC`).
const UBI_EC_MAGIC: &[u8; 4] = b"UBI#";

/// What the start of an MTD partition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MtdContent {
    /// A JFFS2 node (or clean marker) at offset 0.
    Jffs2,
    /// The first erase block is all `0xFF`: an empty JFFS2 (or one whose first
    /// block is free; JFFS2 scans the rest itself).
    Erased,
    /// OpenWrt's "erase me" marker.
    DeadC0de,
    /// Blank in the block-device sense but not erased (zeroes at the start, or
    /// an erase of ours that a power cut stopped before block 0).
    Zeroed,
    /// Only the first erase block holds data, everything else that was read is
    /// erased: an erase of ours (which does block 0 last) cut short in that
    /// block, which a power cut leaves neither erased nor JFFS2.
    CutErase,
    /// Anything else; says what.
    Foreign(String),
}

/// Where [`classify_mtd`] looks: the first and last MiB (or the whole of a
/// smaller partition), as for a block device.
pub fn mtd_edges(size: u64) -> (usize, u64, usize) {
    edge_ranges(size)
}

/// What the first erase block alone tells (a JFFS2 node, `deadc0de`, a UBI
/// header, erased), so that the common cases read no more than that block;
/// `None`: [`classify_mtd`] needs both ends.
pub fn classify_mtd_start(first_block: &[u8]) -> Option<MtdContent> {
    if first_block.starts_with(&JFFS2_MAGIC_LE) || first_block.starts_with(&JFFS2_MAGIC_BE) {
        return Some(MtdContent::Jffs2);
    }
    if first_block.starts_with(&DEADC0DE) {
        return Some(MtdContent::DeadC0de);
    }
    if first_block.starts_with(UBI_EC_MAGIC) {
        return Some(MtdContent::Foreign(
            "a UBI device (attach it with ovl.ubiattach= and use ovl.upper=ubi:VOLUME)".into(),
        ));
    }
    if !first_block.is_empty() && first_block.iter().all(|&b| b == 0xFF) {
        return Some(MtdContent::Erased);
    }
    None
}

/// Classify an MTD partition of `size` bytes and erase blocks of `erase_size`
/// from its first (`head`) and last (`tail`) bytes.
pub fn classify_mtd(head: &[u8], tail: &[u8], size: u64, erase_size: u32) -> MtdContent {
    let block = head.len().min(erase_size as usize);
    if let Some(content) = classify_mtd_start(&head[..block]) {
        return content;
    }
    let erased = |bytes: &[u8]| bytes.iter().all(|&b| b == 0xFF);
    // A partition of one block, or one whose second block is not even read,
    // gives no evidence: never taken for a cut erase.
    if head.len() > block && erased(&head[block..]) && erased(tail) && size > u64::from(erase_size)
    {
        return MtdContent::CutErase;
    }
    match classify(Edges {
        head,
        tail,
        size,
        sector_size: 512,
    }) {
        Classification::Blank(BlankKind::DeadC0de) => MtdContent::DeadC0de,
        // Not erased at the start (checked above): zeroes, at one end or both.
        Classification::Blank(_) => MtdContent::Zeroed,
        Classification::Interrupted(marker) => {
            MtdContent::Foreign(format!("an unfinished {} format", marker.fstype))
        }
        Classification::Usable(info) => MtdContent::Foreign(info.kind.to_string()),
        Classification::Foreign(what) => MtdContent::Foreign(what),
    }
}

/// What the boot does with an MTD partition meant for a JFFS2 upper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MtdDecision {
    /// Mount it as it is.
    Use,
    /// Erase it (the reason, for the log), then mount it.
    Erase(&'static str),
    /// Leave it and boot on tmpfs; the reason is for the warning.
    Refuse(String),
}

/// The decision for `content` under `ovl.format=` (`write_allowed` is false in
/// failsafe, which writes nothing).
pub fn decide_mtd(content: &MtdContent, policy: FormatPolicy, write_allowed: bool) -> MtdDecision {
    let why = match content {
        MtdContent::Jffs2 | MtdContent::Erased => return MtdDecision::Use,
        MtdContent::Foreign(what) => {
            return MtdDecision::Refuse(format!("it holds {what}, not JFFS2; left as it is"))
        }
        MtdContent::DeadC0de => "it starts with the deadc0de marker",
        MtdContent::Zeroed => "it is blank (zeroed), not erased",
        MtdContent::CutErase => "only its first block is not erased (an erase cut short)",
    };
    match (policy, write_allowed) {
        (FormatPolicy::Blank, true) => MtdDecision::Erase(why),
        (FormatPolicy::Never, _) => {
            MtdDecision::Refuse(format!("{why} and ovl.format=never: not erased"))
        }
        (FormatPolicy::Blank, false) => {
            MtdDecision::Refuse(format!("{why}; a failsafe boot erases nothing"))
        }
    }
}

/// `ubiN` (a UBI device) or `ubiN_M` (volume M of it), as sysfs names them
/// under `/sys/class/ubi`; `None` for anything else (`version`, `ubi_ctrl`).
pub fn parse_ubi_sysfs_name(name: &str) -> Option<(u32, Option<u32>)> {
    let rest = name.strip_prefix("ubi")?;
    let number = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match rest.split_once('_') {
        None => Some((number(rest)?, None)),
        Some((device, volume)) => Some((number(device)?, Some(number(volume)?))),
    }
}

/// UBIFS's node magic (`UBIFS_NODE_MAGIC`, little-endian) at the start of LEB 0.
const UBIFS_NODE_MAGIC: [u8; 4] = [0x31, 0x18, 0x10, 0x06];

/// What the start of a UBI volume holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UbiVolumeContent {
    Ubifs,
    /// Never written (reads as `0xFF`): UBIFS formats it at its first
    /// read-write mount.
    Empty,
    Foreign,
}

pub fn classify_ubi_volume(start: &[u8]) -> UbiVolumeContent {
    if start.starts_with(&UBIFS_NODE_MAGIC) {
        UbiVolumeContent::Ubifs
    } else if !start.is_empty() && start.iter().all(|&b| b == 0xFF) {
        UbiVolumeContent::Empty
    } else {
        UbiVolumeContent::Foreign
    }
}

/// What the boot does to a UBI device for the volume of the upper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UbiDecision {
    /// Mount it as it is.
    Use,
    /// Create the volume (no volume of that name) and let UBIFS format it.
    CreateVolume,
    /// Let UBIFS format the empty volume (a read-write mount, then unmount).
    Format,
    Refuse(String),
}

/// `content` is `None` when the device has no volume of that name.
pub fn decide_ubi(
    content: Option<&UbiVolumeContent>,
    policy: FormatPolicy,
    write_allowed: bool,
) -> UbiDecision {
    let (decision, why) = match content {
        Some(UbiVolumeContent::Ubifs) => return UbiDecision::Use,
        Some(UbiVolumeContent::Foreign) => {
            return UbiDecision::Refuse(
                "the volume holds something that is not UBIFS; left as it is".into(),
            )
        }
        Some(UbiVolumeContent::Empty) => (UbiDecision::Format, "the volume is empty"),
        None => (UbiDecision::CreateVolume, "there is no volume of that name"),
    };
    match (policy, write_allowed) {
        (FormatPolicy::Blank, true) => decision,
        (FormatPolicy::Never, _) => {
            UbiDecision::Refuse(format!("{why} and ovl.format=never: nothing created"))
        }
        (FormatPolicy::Blank, false) => {
            UbiDecision::Refuse(format!("{why}; a failsafe boot creates nothing"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;
    const BLOCK: u32 = 128 * 1024;

    fn classify_image(image: &[u8]) -> MtdContent {
        let (head_len, tail_at, tail_len) = mtd_edges(image.len() as u64);
        let tail = &image[tail_at as usize..tail_at as usize + tail_len];
        classify_mtd(&image[..head_len], tail, image.len() as u64, BLOCK)
    }

    #[test]
    fn erased_and_jffs2_partitions_are_used() {
        let mut image = vec![0xFF; 4 * MIB];
        assert_eq!(classify_image(&image), MtdContent::Erased);
        // JFFS2 nodes further on (the first block free): still taken as it is.
        image[3 * MIB..3 * MIB + 2].copy_from_slice(&JFFS2_MAGIC_LE);
        assert_eq!(classify_image(&image), MtdContent::Erased);
        for magic in [JFFS2_MAGIC_LE, JFFS2_MAGIC_BE] {
            let mut image = vec![0x33; 4 * MIB];
            image[..2].copy_from_slice(&magic);
            assert_eq!(classify_image(&image), MtdContent::Jffs2);
        }
        for content in [MtdContent::Jffs2, MtdContent::Erased] {
            for policy in [FormatPolicy::Blank, FormatPolicy::Never] {
                assert_eq!(decide_mtd(&content, policy, true), MtdDecision::Use);
                assert_eq!(decide_mtd(&content, policy, false), MtdDecision::Use);
            }
        }
    }

    #[test]
    fn deadc0de_and_zeroes_are_erased_with_format_blank_only() {
        let mut image = vec![0x5A; 4 * MIB];
        image[..4].copy_from_slice(&DEADC0DE);
        assert_eq!(classify_image(&image), MtdContent::DeadC0de);
        let zeroed = vec![0u8; 4 * MIB];
        assert_eq!(classify_image(&zeroed), MtdContent::Zeroed);
        // An erase of ours cut short: the end erased, block 0 not yet.
        let mut half = vec![0u8; 4 * MIB];
        half[2 * MIB..].fill(0xFF);
        assert_eq!(classify_image(&half), MtdContent::Zeroed);
        for content in [MtdContent::DeadC0de, MtdContent::Zeroed] {
            assert!(matches!(
                decide_mtd(&content, FormatPolicy::Blank, true),
                MtdDecision::Erase(_)
            ));
            let MtdDecision::Refuse(why) = decide_mtd(&content, FormatPolicy::Never, true) else {
                panic!("ovl.format=never erased {content:?}");
            };
            assert!(why.contains("ovl.format=never"), "{why}");
            let MtdDecision::Refuse(why) = decide_mtd(&content, FormatPolicy::Blank, false) else {
                panic!("failsafe erased {content:?}");
            };
            assert!(why.contains("failsafe"), "{why}");
        }
    }

    #[test]
    fn anything_else_is_never_erased() {
        let mut ubi = vec![0xFF; 4 * MIB];
        ubi[..4].copy_from_slice(UBI_EC_MAGIC);
        let mut data = vec![0u8; 4 * MIB];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let mut squashfs = vec![0u8; 4 * MIB];
        squashfs[..4].copy_from_slice(b"hsqs");
        for (image, what) in [(ubi, "UBI"), (data, "neither zeroed nor erased")] {
            let content = classify_image(&image);
            let MtdContent::Foreign(found) = &content else {
                panic!("{what}: {content:?}");
            };
            assert!(found.contains(what), "{found}");
            let MtdDecision::Refuse(why) = decide_mtd(&content, FormatPolicy::Blank, true) else {
                panic!("{what} would be erased");
            };
            assert!(why.contains("not JFFS2"), "{why}");
        }
        assert!(matches!(classify_image(&squashfs), MtdContent::Foreign(_)));
    }

    #[test]
    fn the_first_block_decides_the_common_cases() {
        let mut block = vec![0xFFu8; BLOCK as usize];
        assert_eq!(classify_mtd_start(&block), Some(MtdContent::Erased));
        block[..4].copy_from_slice(&DEADC0DE);
        assert_eq!(classify_mtd_start(&block), Some(MtdContent::DeadC0de));
        block[..2].copy_from_slice(&JFFS2_MAGIC_BE);
        assert_eq!(classify_mtd_start(&block), Some(MtdContent::Jffs2));
        // Zeroes need the other end too.
        assert_eq!(classify_mtd_start(&vec![0u8; BLOCK as usize]), None);
        assert_eq!(classify_mtd_start(&[]), None);
    }

    #[test]
    fn an_erase_cut_in_block_0_is_erased_again() {
        // The rest erased, block 0 half old data, half erased (a power cut mid-block).
        let mut image = vec![0xFFu8; 4 * MIB];
        for (i, b) in image[..BLOCK as usize / 2].iter_mut().enumerate() {
            *b = (i % 13) as u8;
        }
        assert_eq!(classify_image(&image), MtdContent::CutErase);
        assert!(matches!(
            decide_mtd(&MtdContent::CutErase, FormatPolicy::Blank, true),
            MtdDecision::Erase(_)
        ));
        assert!(matches!(
            decide_mtd(&MtdContent::CutErase, FormatPolicy::Never, true),
            MtdDecision::Refuse(_)
        ));
        // Data in a second block too: not ours.
        image[BLOCK as usize + 7] = 0;
        assert!(matches!(classify_image(&image), MtdContent::Foreign(_)));
        // A one-block partition with data: nothing to go by.
        let mut one = vec![0xFFu8; BLOCK as usize];
        one[100] = 1;
        assert!(matches!(classify_image(&one), MtdContent::Foreign(_)));
    }

    #[test]
    fn small_partitions_are_read_whole() {
        // 256 KiB: head and tail are the same bytes.
        let image = vec![0xFF; 256 * 1024];
        assert_eq!(classify_image(&image), MtdContent::Erased);
        let zeroed = vec![0u8; 256 * 1024];
        assert_eq!(classify_image(&zeroed), MtdContent::Zeroed);
    }

    #[test]
    fn ubi_sysfs_names() {
        assert_eq!(parse_ubi_sysfs_name("ubi0"), Some((0, None)));
        assert_eq!(parse_ubi_sysfs_name("ubi12_3"), Some((12, Some(3))));
        for other in ["ubi_ctrl", "version", "ubi", "ubi0_", "ubix", "ubi0_x"] {
            assert_eq!(parse_ubi_sysfs_name(other), None, "{other}");
        }
    }

    #[test]
    fn ubi_volumes_are_created_or_formatted_with_format_blank_only() {
        let mut ubifs = vec![0u8; 64];
        ubifs[..4].copy_from_slice(&UBIFS_NODE_MAGIC);
        assert_eq!(classify_ubi_volume(&ubifs), UbiVolumeContent::Ubifs);
        assert_eq!(classify_ubi_volume(&[0xFF; 64]), UbiVolumeContent::Empty);
        assert_eq!(classify_ubi_volume(&[0x00; 64]), UbiVolumeContent::Foreign);
        assert_eq!(classify_ubi_volume(&[]), UbiVolumeContent::Foreign);
        let blank = FormatPolicy::Blank;
        let never = FormatPolicy::Never;
        assert_eq!(
            decide_ubi(Some(&UbiVolumeContent::Ubifs), never, false),
            UbiDecision::Use
        );
        assert_eq!(decide_ubi(None, blank, true), UbiDecision::CreateVolume);
        assert_eq!(
            decide_ubi(Some(&UbiVolumeContent::Empty), blank, true),
            UbiDecision::Format
        );
        for (content, policy, write) in [
            (None, never, true),
            (None, blank, false),
            (Some(&UbiVolumeContent::Empty), never, true),
            (Some(&UbiVolumeContent::Foreign), blank, true),
        ] {
            assert!(
                matches!(decide_ubi(content, policy, write), UbiDecision::Refuse(_)),
                "{content:?} {policy:?} {write}"
            );
        }
    }
}
