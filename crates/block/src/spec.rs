//! Backend specifications as users type them: `memory:1G`, `file:/var/lib/disk.img`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::file::{FileBackend, FileOptions};
use crate::memory::MemoryBackend;
use crate::{BlockError, SharedBackend};

/// Why a backend specification could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The text is not `KIND:ARG` with a known kind.
    #[error("Unknown backend {0:?}: use memory:SIZE (e.g. memory:1G) or file:PATH")]
    UnknownKind(String),
    /// A size that does not parse.
    #[error("Invalid size {0:?}: use a number of bytes with an optional K, M, G, T or P suffix")]
    BadSize(String),
    /// The backend failed to open.
    #[error("Cannot open backend {spec}")]
    Open {
        /// The specification.
        spec: String,
        /// Why.
        #[source]
        source: BlockError,
    },
}

/// A parsed backend specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// `memory:SIZE`: a sparse RAM disk.
    Memory {
        /// Size in bytes.
        size: u64,
    },
    /// `file:PATH`: a regular file or block device.
    File {
        /// Path of the file or device.
        path: PathBuf,
    },
}

impl std::str::FromStr for BackendSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s.split_once(':') {
            Some(("memory" | "mem" | "ram", size)) => Ok(BackendSpec::Memory {
                size: parse_size(size)?,
            }),
            Some(("file", path)) if !path.is_empty() => Ok(BackendSpec::File { path: path.into() }),
            _ => Err(SpecError::UnknownKind(s.to_owned())),
        }
    }
}

impl std::fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendSpec::Memory { size } => write!(f, "memory:{size}"),
            BackendSpec::File { path } => write!(f, "file:{}", path.display()),
        }
    }
}

impl BackendSpec {
    /// Opens the backend; `file_options` applies to `file:` specifications.
    pub fn open(&self, file_options: &FileOptions) -> Result<SharedBackend, SpecError> {
        let opened: Result<SharedBackend, BlockError> = match self {
            BackendSpec::Memory { size } => MemoryBackend::new(*size).map(|b| Arc::new(b) as _),
            BackendSpec::File { path } => {
                FileBackend::open(path, file_options.clone()).map(|b| Arc::new(b) as _)
            }
        };
        opened.map_err(|source| SpecError::Open {
            spec: self.to_string(),
            source,
        })
    }
}

/// Parses and opens a specification in one step.
pub fn open_spec(spec: &str, file_options: &FileOptions) -> Result<SharedBackend, SpecError> {
    spec.parse::<BackendSpec>()?.open(file_options)
}

/// Parses `4096`, `64K`, `512M`, `1G`, `2TiB`, `1GB` (binary multiples in every case).
pub fn parse_size(text: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::BadSize(text.to_owned());
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match suffix
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("2TiB").unwrap(), 2 << 40);
        assert_eq!(parse_size("3mb").unwrap(), 3 << 20);
        assert!(parse_size("").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999999P").is_err());
    }

    #[test]
    fn specs_parse_and_open() {
        assert_eq!(
            "memory:1M".parse::<BackendSpec>().unwrap(),
            BackendSpec::Memory { size: 1 << 20 }
        );
        assert!("disk:x".parse::<BackendSpec>().is_err());
        assert!("file:".parse::<BackendSpec>().is_err());
        let b = open_spec("memory:1M", &FileOptions::default()).unwrap();
        assert_eq!(b.capabilities().size, 1 << 20);
        let err = open_spec("file:/nonexistent/x", &FileOptions::default()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x"));
    }
}
