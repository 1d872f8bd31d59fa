//! Named module sets for the builder's presets (`--live`).

/// `--live`: what booting from live media needs on top of the default set —
/// a CD-ROM (the SCSI CD driver and the controllers QEMU and most VMs put a
/// CD on: `ata_piix` for `-cdrom`, `virtio_scsi` for a SCSI CD), the SCSI disk
/// driver (USB sticks and virtio-scsi disks are `sd` devices), the filesystems
/// a live image is carried on (iso9660, vfat, exfat), the character sets the
/// vfat mount options name (`live::image_host`: codepage 437, ASCII; plus
/// ISO 8859-1 and UTF-8 for an `iocharset=` of one's own), and loop devices for
/// the image file itself. USB host controllers and `usb_storage` are not in
/// it: Debian's cloud kernel does not build them (see initramfs/README.md).
pub const LIVE_MODULES: &[&str] = &[
    "sr_mod",
    "cdrom",
    "ata_piix",
    "virtio_scsi",
    "sd_mod",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "nls_utf8",
    "exfat",
    "loop",
];
