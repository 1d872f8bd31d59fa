//! Checks made before the point of no return: the real init must be a runnable
//! file inside the new root before anything of the initramfs is deleted.

/// What the first bytes of the real init say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executable {
    Elf,
    Script,
}

/// Classify an executable by its header; `Err` says why it cannot run.
pub fn classify_executable(head: &[u8]) -> Result<Executable, String> {
    if head.starts_with(b"\x7fELF") {
        Ok(Executable::Elf)
    } else if head.starts_with(b"#!") {
        Ok(Executable::Script)
    } else if head.is_empty() {
        Err("it is an empty file".into())
    } else {
        Err("it is neither an ELF binary nor a #! script".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_headers() {
        assert_eq!(classify_executable(b"\x7fELF\x02\x01"), Ok(Executable::Elf));
        assert_eq!(classify_executable(b"#!/bin/sh\n"), Ok(Executable::Script));
        assert!(classify_executable(b"").unwrap_err().contains("empty"));
        assert!(classify_executable(b"MZ").is_err());
    }
}
