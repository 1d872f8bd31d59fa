//! The module index the initramfs carries: which modules to load, in which order.
