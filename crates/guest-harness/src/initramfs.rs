//! The guest's initramfs: busybox, kernel modules with their dependencies, programs with the
//! shared libraries `ldd` lists, and files; staged in a temporary folder and packed with
//! `cpio -H newc` (uncompressed: under TCG the kernel unpacks it faster than it gunzips).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::env::{find_program, GuestEnv};
use crate::GuestError;

/// One `insmod` line of the guest's `/init`, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoad {
    /// Path inside the guest.
    pub guest_path: String,
    /// Module parameters, e.g. `nbds_max=4`.
    pub params: String,
}

/// A staged initramfs tree.
#[derive(Debug)]
pub struct Initramfs {
    root: tempfile::TempDir,
    modules: Vec<ModuleLoad>,
    loaded: HashSet<String>,
}

impl Initramfs {
    /// A tree with the standard folders and busybox as `/bin/busybox`.
    pub fn new(env: &GuestEnv) -> Result<Self, GuestError> {
        let root = tempfile::Builder::new()
            .prefix("oxio-initramfs-")
            .tempdir()
            .map_err(|e| GuestError::io("create the initramfs staging folder", e))?;
        let this = Initramfs {
            root,
            modules: Vec::new(),
            loaded: HashSet::new(),
        };
        for dir in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "mnt", "run",
        ] {
            let path = this.root.path().join(dir);
            fs::create_dir_all(&path).map_err(|e| GuestError::io("create a staging folder", e))?;
        }
        this.copy_in(&env.busybox, "/bin/busybox", 0o755)?;
        Ok(this)
    }

    /// The modules added so far, in load order.
    pub fn modules(&self) -> &[ModuleLoad] {
        &self.modules
    }

    /// Adds module `name` and everything it depends on (`modprobe --show-depends`), in load
    /// order, once each. Built-in modules need nothing. `params` apply to `name` only.
    pub fn add_module(
        &mut self,
        env: &GuestEnv,
        name: &str,
        params: &str,
    ) -> Result<(), GuestError> {
        let output = Command::new(find_program("modprobe")?)
            .arg("-d")
            .arg(&env.modules_root)
            .args([
                "-S",
                &env.kernel_version,
                "--show-depends",
                "--ignore-install",
                name,
            ])
            .output()
            .map_err(|e| GuestError::io("run modprobe --show-depends", e))?;
        if !output.status.success() {
            return Err(GuestError::Setup(format!(
                "kernel module `{name}` is not in the guest kernel {}: {}",
                env.kernel_version,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let wanted = name.replace('-', "_");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Some(host_path) = line
                .strip_prefix("insmod ")
                .and_then(|r| r.split_whitespace().next())
            else {
                continue; // "builtin NAME": nothing to load.
            };
            let host_path = Path::new(host_path);
            let rel = host_path.strip_prefix(&env.modules_root).map_err(|_| {
                GuestError::Setup(format!(
                    "modprobe named {} outside the tree",
                    host_path.display()
                ))
            })?;
            let guest_path = format!("/{}", rel.display());
            if !self.loaded.insert(guest_path.clone()) {
                continue;
            }
            self.copy_in(host_path, &guest_path, 0o644)?;
            let stem = module_name(host_path);
            let params = if stem == wanted {
                params.to_string()
            } else {
                String::new()
            };
            self.modules.push(ModuleLoad { guest_path, params });
        }
        Ok(())
    }

    /// Copies a host program to `guest_path` together with the shared libraries `ldd` lists
    /// (kept at the paths ldd prints, so the dynamic loader finds them).
    pub fn add_program(&mut self, host: &Path, guest_path: &str) -> Result<(), GuestError> {
        self.copy_in(host, guest_path, 0o755)?;
        for lib in shared_libraries(host)? {
            let dest = lib.to_string_lossy().into_owned();
            if !self.root.path().join(dest.trim_start_matches('/')).exists() {
                self.copy_in(&lib, &dest, 0o755)?;
            }
        }
        Ok(())
    }

    /// Copies a host file to `guest_path` with `mode`.
    pub fn copy_in(&self, host: &Path, guest_path: &str, mode: u32) -> Result<(), GuestError> {
        let dest = self.prepare(guest_path)?;
        fs::copy(host, &dest).map_err(|e| {
            GuestError::io(format!("copy {} into the initramfs", host.display()), e)
        })?;
        set_mode(&dest, mode)
    }

    /// Writes `contents` to `guest_path` with `mode`.
    pub fn write(&self, guest_path: &str, contents: &[u8], mode: u32) -> Result<(), GuestError> {
        let dest = self.prepare(guest_path)?;
        fs::write(&dest, contents).map_err(|e| GuestError::io("write an initramfs file", e))?;
        set_mode(&dest, mode)
    }

    /// Packs the tree into an uncompressed newc cpio archive at `out`.
    pub fn pack(&self, out: &Path) -> Result<(), GuestError> {
        let file = fs::File::create(out).map_err(|e| GuestError::io("create the initramfs", e))?;
        let status = Command::new("sh")
            .args([
                "-c",
                "find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet",
            ])
            .current_dir(self.root.path())
            .stdout(Stdio::from(file))
            .status()
            .map_err(|e| GuestError::io("run cpio", e))?;
        if status.success() {
            Ok(())
        } else {
            Err(GuestError::Setup(format!(
                "cpio failed ({status}); is the cpio package installed?"
            )))
        }
    }

    fn prepare(&self, guest_path: &str) -> Result<PathBuf, GuestError> {
        let rel = guest_path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            return Err(GuestError::Setup(format!("bad guest path `{guest_path}`")));
        }
        let dest = self.root.path().join(rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| GuestError::io("create a staging folder", e))?;
        }
        Ok(dest)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), GuestError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| GuestError::io("set an initramfs file's mode", e))
}

/// `.../virtio_blk.ko` (or `.ko.xz`) -> `virtio_blk`.
fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.split(".ko")
        .next()
        .unwrap_or_default()
        .replace('-', "_")
}

/// The shared libraries (and dynamic loader) `ldd` lists for `program`; none if static.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, GuestError> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| GuestError::io("run ldd", e))?;
    // ldd exits non-zero for static programs ("not a dynamic executable").
    Ok(parse_ldd(&String::from_utf8_lossy(&output.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libext2fs.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn names_modules() {
        assert_eq!(module_name(Path::new("/a/virtio_blk.ko")), "virtio_blk");
        assert_eq!(
            module_name(Path::new("/a/vmw_vsock-x.ko.xz")),
            "vmw_vsock_x"
        );
    }
}
