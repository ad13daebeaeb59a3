//! The agent binary of a release (`<dist>/<arch>/mcp-agent`, what
//! `dev/release` writes), as `mcp agent upgrade` and `mcp node provision`
//! install it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::error::usage;

/// An agent binary to install.
pub struct Binary {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// Hex SHA-256 of `bytes`, checked again on the node after the upload.
    pub sha256: String,
}

impl Binary {
    /// The agent binary for `arch` in the release directory `dist`.
    pub fn path(dist: &Path, arch: &str) -> PathBuf {
        dist.join(arch).join("mcp-agent")
    }

    /// Reads `path` whole; a usage error when it is missing.
    pub fn read(path: &Path) -> Result<Binary> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                usage!(
                    "{} is missing: build the release first (dev/release) or pass --dist",
                    path.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(Binary {
            path: path.to_path_buf(),
            bytes,
            sha256,
        })
    }

    /// The binary, unless it is neither an ELF executable nor a script.
    pub fn executable(self) -> Result<Binary> {
        let b = &self.bytes;
        if b.len() < 4 || (&b[..4] != b"\x7fELF" && &b[..2] != b"#!") {
            usage!("{}: not an executable (no ELF header)", self.path.display());
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_elf_or_scripts() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (bytes, ok) in [
            (&b"\x7fELF\x02\x01"[..], true),
            (b"#!/bin/sh\necho", true),
            (b"MZ\x90\x00", false),
            (b"#!", false),
        ] {
            let path = dir.path().join("mcp-agent");
            std::fs::write(&path, bytes).expect("write");
            let b = Binary::read(&path).expect("readable");
            assert_eq!(b.sha256, hex::encode(Sha256::digest(bytes)));
            assert_eq!(b.executable().is_ok(), ok, "{bytes:?}");
        }
        let missing = Binary::read(&dir.path().join("none")).err().expect("missing");
        assert!(
            missing.downcast_ref::<crate::error::UsageError>().is_some(),
            "{missing:#}"
        );
    }
}
