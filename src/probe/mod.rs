//! Superblock and partition-table readers: pure functions over bytes.
