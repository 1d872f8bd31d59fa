//! The initramfs builder's core: module dependency resolution and the cpio writer.
