//! Statically linked builds of workspace binaries for the guest (`-C target-feature=+crt-static`
//! on the gnu target), kept in their own target folder so the flag never invalidates the
//! normal build.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::env::workspace_root;
use crate::GuestError;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds binary `bin` of workspace package `package` statically (release profile) and
/// returns its path. Built once per process; cargo makes later calls cheap.
pub fn static_binary(package: &str, bin: &str) -> Result<PathBuf, GuestError> {
    static BUILT: Mutex<Option<HashMap<(String, String), PathBuf>>> = Mutex::new(None);
    let key = (package.to_string(), bin.to_string());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref().and_then(|m| m.get(&key)) {
        return Ok(path.clone());
    }
    let target_dir = static_target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "--release",
            "--quiet",
            "-p",
            package,
            "--bin",
            bin,
        ])
        .args(["--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        .current_dir(workspace_root())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .output()
        .map_err(|e| GuestError::io("run cargo to build a static guest program", e))?;
    if !output.status.success() {
        return Err(GuestError::Build {
            bin: bin.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let path = target_dir.join(TARGET).join("release").join(bin);
    if has_interpreter(&path)? {
        return Err(GuestError::Build {
            bin: bin.to_string(),
            stderr: format!(
                "{} is dynamically linked despite +crt-static",
                path.display()
            ),
        });
    }
    built
        .get_or_insert_with(HashMap::new)
        .insert(key, path.clone());
    Ok(path)
}

/// `$OXIO_GUEST_TARGET_DIR`, else `$CARGO_TARGET_DIR/guest-static`, else `target/guest-static`.
fn static_target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OXIO_GUEST_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("guest-static")
}

/// Whether the ELF file at `path` names a dynamic loader (a `PT_INTERP` program header).
fn has_interpreter(path: &Path) -> Result<bool, GuestError> {
    let elf = std::fs::read(path).map_err(|e| GuestError::io("read a built guest program", e))?;
    let bad = || GuestError::Setup(format!("{} is not a 64-bit ELF file", path.display()));
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&2) {
        return Err(bad());
    }
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let phoff = elf
        .get(0x20..0x28)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(bad)?;
    let entsize = usize::from(u16_at(0x36).ok_or_else(bad)?);
    let count = usize::from(u16_at(0x38).ok_or_else(bad)?);
    const PT_INTERP: u32 = 3;
    Ok((0..count).any(|i| {
        let at = phoff + i * entsize;
        elf.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .is_some_and(|b| u32::from_le_bytes(b) == PT_INTERP)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_programs_have_an_interpreter() {
        assert!(has_interpreter(Path::new("/bin/ls")).unwrap());
        if Path::new("/bin/busybox").is_file() {
            assert!(!has_interpreter(Path::new("/bin/busybox")).unwrap()); // busybox-static
        }
    }
}
