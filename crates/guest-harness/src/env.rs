//! Where the guest environment lives: the cache that `scripts/setup.d/20-guest.sh` fills
//! (kernel image, module tree) and the host tools the harness drives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::GuestError;

/// The guest kernel and the host tools, resolved once per process.
#[derive(Debug, Clone)]
pub struct GuestEnv {
    /// The cache folder (`.cache/guest` in the workspace unless `OXIO_GUEST_CACHE` is set).
    pub cache: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// The bzImage QEMU boots.
    pub kernel_image: PathBuf,
    /// The unpacked package root: modules live under `lib/modules/<version>/`.
    pub modules_root: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// The statically linked busybox copied into every initramfs.
    pub busybox: PathBuf,
}

const SETUP_HINT: &str = "run `bash scripts/setup.d/20-guest.sh` as root (scripts/test.sh does)";

impl GuestEnv {
    /// The process-wide environment, or an error that says how to set it up.
    pub fn get() -> Result<&'static GuestEnv, GuestError> {
        static ENV: OnceLock<Result<GuestEnv, String>> = OnceLock::new();
        ENV.get_or_init(|| GuestEnv::discover().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| GuestError::Setup(e.clone()))
    }

    fn discover() -> Result<GuestEnv, GuestError> {
        let cache = std::env::var_os("OXIO_GUEST_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".cache/guest"));
        let env_file = cache.join("kernel.env");
        let text = std::fs::read_to_string(&env_file).map_err(|e| {
            GuestError::Setup(format!(
                "cannot read {}: {e}; {SETUP_HINT}",
                env_file.display()
            ))
        })?;
        let vars = parse_env(&text);
        let kernel_version = vars
            .get("KERNEL_VERSION")
            .ok_or_else(|| {
                GuestError::Setup(format!("{} has no KERNEL_VERSION", env_file.display()))
            })?
            .clone();
        let modules_root = cache.join("kernel");
        let kernel_image = modules_root.join(format!("boot/vmlinuz-{kernel_version}"));
        let modules_dep = modules_root.join(format!("lib/modules/{kernel_version}/modules.dep"));
        for needed in [&kernel_image, &modules_dep] {
            if !needed.is_file() {
                return Err(GuestError::Setup(format!(
                    "{} is missing; {SETUP_HINT}",
                    needed.display()
                )));
            }
        }
        let qemu = find_program("qemu-system-x86_64")?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                GuestError::Setup(format!("busybox-static is not installed; {SETUP_HINT}"))
            })?;
        Ok(GuestEnv {
            cache,
            kernel_version,
            kernel_image,
            modules_root,
            qemu,
            busybox,
        })
    }

    /// The module tree for this kernel inside `modules_root`.
    pub fn modules_dir(&self) -> PathBuf {
        self.modules_root
            .join("lib/modules")
            .join(&self.kernel_version)
    }
}

/// The workspace root: the nearest folder holding a `[workspace]` manifest above the running
/// test's package (`CARGO_MANIFEST_DIR` at run time, as cargo and nextest set it), else above
/// this crate.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|text| text.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or(&start)
        .to_path_buf()
}

/// Finds `name` on `PATH` (plus the sbin folders, which a non-login root shell may lack).
pub fn find_program(name: &str) -> Result<PathBuf, GuestError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| GuestError::Setup(format!("`{name}` is not installed; {SETUP_HINT}")))
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_env() {
        let vars = parse_env("KERNEL_VERSION=6.1.0-56-cloud-amd64\nMODULES_DIR=\"/x\"\n\n");
        assert_eq!(vars["KERNEL_VERSION"], "6.1.0-56-cloud-amd64");
        assert_eq!(vars["MODULES_DIR"], "/x");
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("crates/guest-harness").is_dir());
    }
}
