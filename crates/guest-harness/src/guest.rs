//! The guest description: what goes into the initramfs, what the guest runs, and how QEMU is
//! started. Every field has a default that boots; a device test adds a few lines.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::env::{find_program, GuestEnv};
use crate::initramfs::Initramfs;
use crate::run::{GuestOutcome, RunningGuest};
use crate::static_bin::static_binary;
use crate::GuestError;

/// Shell functions every guest script can call (sourced before the test script).
const PRELUDE: &str = r#"
# Configure eth0 for QEMU's -netdev user (slirp): the host's 127.0.0.1 is 10.0.2.2.
net_user_up() {
    ip link set lo up
    ip link set "${1:-eth0}" up
    ip addr add 10.0.2.15/24 dev "${1:-eth0}"
    ip route add default via 10.0.2.2
}
# Wait until a path exists (a device node appearing), up to $2 seconds (default 10).
wait_for() {
    i=0
    while [ ! -e "$1" ]; do
        i=$((i + 1)); [ "$i" -le $((${2:-10} * 10)) ] || { echo "timed out waiting for $1"; return 1; }
        sleep 0.1
    done
}
# Print a line the host can wait for with RunningGuest::wait_for_serial.
mark() { echo "OXIO-MARK $*"; }
"#;

/// A guest to boot: build it with the methods below, then [`Guest::run`] or [`Guest::spawn`].
#[derive(Debug, Clone)]
pub struct Guest {
    pub(crate) name: String,
    modules: Vec<(String, String)>,
    programs: Vec<(PathBuf, String)>,
    static_bins: Vec<(String, String)>,
    files: Vec<(String, Vec<u8>, u32)>,
    script: String,
    trace: bool,
    qemu_args: Vec<OsString>,
    memory_mib: u32,
    smp: u32,
    machine: String,
    shared_memory: bool,
    pub(crate) timeout: Duration,
    kernel_args: Vec<String>,
}

impl Guest {
    /// A guest named `name` (used in logs): 512 MiB, 1 vCPU, q35, no NIC, 120 s timeout.
    pub fn new(name: &str) -> Self {
        Guest {
            name: name.to_string(),
            modules: Vec::new(),
            programs: Vec::new(),
            static_bins: Vec::new(),
            files: Vec::new(),
            script: String::new(),
            trace: true,
            qemu_args: Vec::new(),
            memory_mib: 512,
            smp: 1,
            machine: "q35".to_string(),
            shared_memory: false,
            timeout: Duration::from_secs(120),
            kernel_args: Vec::new(),
        }
    }

    /// Loads kernel module `name` (and its dependencies) before the script runs.
    pub fn module(self, name: &str) -> Self {
        self.module_with_params(name, "")
    }

    /// Loads kernel module `name` with parameters, e.g. `("nbd", "nbds_max=4")`.
    pub fn module_with_params(mut self, name: &str, params: &str) -> Self {
        self.modules.push((name.to_string(), params.to_string()));
        self
    }

    /// Loads several modules, e.g. `["virtio_pci", "virtio_blk"]`.
    pub fn modules<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        for name in names {
            self = self.module(name);
        }
        self
    }

    /// Copies a host program (found on `PATH`, e.g. `mkfs.ext4`) to `/usr/bin/<name>` with
    /// its shared libraries.
    pub fn host_program(mut self, name: &str) -> Self {
        self.programs
            .push((PathBuf::from(name), format!("/usr/bin/{name}")));
        self
    }

    /// Copies the program at `host` to `guest_path` with its shared libraries.
    pub fn program_at(mut self, host: &Path, guest_path: &str) -> Self {
        self.programs
            .push((host.to_path_buf(), guest_path.to_string()));
        self
    }

    /// Builds `bin` of workspace package `package` statically and installs it as `/bin/<bin>`.
    pub fn static_binary(mut self, package: &str, bin: &str) -> Self {
        self.static_bins
            .push((package.to_string(), bin.to_string()));
        self
    }

    /// Adds a file with `contents` at `guest_path` (mode 0644, or 0755 if it starts with `#!`).
    pub fn file(mut self, guest_path: &str, contents: impl Into<Vec<u8>>) -> Self {
        let contents = contents.into();
        let mode = if contents.starts_with(b"#!") {
            0o755
        } else {
            0o644
        };
        self.files.push((guest_path.to_string(), contents, mode));
        self
    }

    /// The test itself: a busybox `sh -e` script. Exit status 0 passes. The helpers of the
    /// prelude (`net_user_up`, `wait_for`, `mark`) and `/bin/oxio-guest` are available.
    pub fn script(mut self, script: &str) -> Self {
        self.script = script.to_string();
        self
    }

    /// Whether the script runs with `set -x` (default on: the serial log shows each command).
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// Appends QEMU arguments (devices, chardevs, netdevs, drives).
    pub fn qemu_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Guest RAM in MiB (default 512).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs (default 1; TCG runs them on one host thread each).
    pub fn smp(mut self, cpus: u32) -> Self {
        self.smp = cpus;
        self
    }

    /// QEMU machine type (default `q35`; `pc` also works; `microvm` is unreliable under TCG).
    pub fn machine(mut self, machine: &str) -> Self {
        self.machine = machine.to_string();
        self
    }

    /// Backs guest RAM with a shared memfd, as vhost-user backends need.
    pub fn shared_memory(mut self) -> Self {
        self.shared_memory = true;
        self
    }

    /// Kills the guest after this long (default 120 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Appends a kernel command-line argument.
    pub fn kernel_arg(mut self, arg: &str) -> Self {
        self.kernel_args.push(arg.to_string());
        self
    }

    /// Boots the guest and waits for it to finish.
    pub fn run(&self) -> Result<GuestOutcome, GuestError> {
        self.spawn()?.wait()
    }

    /// Boots the guest and returns at once, so the host can act while it runs.
    pub fn spawn(&self) -> Result<RunningGuest, GuestError> {
        let env = GuestEnv::get()?;
        let initramfs = self.build_initramfs(env)?;
        RunningGuest::start(self, env, initramfs)
    }

    fn build_initramfs(&self, env: &GuestEnv) -> Result<Initramfs, GuestError> {
        let mut tree = Initramfs::new(env)?;
        let helper = static_binary(env!("CARGO_PKG_NAME"), "oxio-guest")?;
        tree.copy_in(&helper, "/bin/oxio-guest", 0o755)?;
        for (package, bin) in &self.static_bins {
            let path = static_binary(package, bin)?;
            tree.copy_in(&path, &format!("/bin/{bin}"), 0o755)?;
        }
        for (host, guest_path) in &self.programs {
            let host = if host.is_absolute() {
                host.clone()
            } else {
                find_program(&host.to_string_lossy())?
            };
            tree.add_program(&host, guest_path)?;
        }
        for (name, params) in &self.modules {
            tree.add_module(env, name, params)?;
        }
        for (guest_path, contents, mode) in &self.files {
            tree.write(guest_path, contents, *mode)?;
        }
        tree.write("/lib/oxio-guest.sh", PRELUDE.as_bytes(), 0o644)?;
        tree.write("/test.sh", self.script.as_bytes(), 0o755)?;
        tree.write("/init", self.init_script(&tree).as_bytes(), 0o755)?;
        Ok(tree)
    }

    /// `/init`: mounts, loads modules, runs the test, reports its status via isa-debug-exit.
    fn init_script(&self, tree: &Initramfs) -> String {
        let mut s = String::from(
            "#!/bin/busybox sh\n\
             /bin/busybox mount -t proc proc /proc\n\
             /bin/busybox --install -s\n\
             export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev\n\
             mount -t tmpfs tmpfs /tmp\n\
             mount -t tmpfs tmpfs /run\n\
             echo \"OXIO-GUEST-BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
             report() { echo \"OXIO-GUEST-END rc=$1\"; sync; /bin/oxio-guest exit \"$1\"; \
             echo 'isa-debug-exit did not stop QEMU'; poweroff -f; }\n",
        );
        for module in tree.modules() {
            let _ = writeln!(
                s,
                "insmod {} {} || {{ echo 'OXIO-GUEST-ERROR insmod {} failed'; report 125; }}",
                module.guest_path, module.params, module.guest_path
            );
        }
        let flags = if self.trace { "-ex" } else { "-e" };
        let _ = write!(
            s,
            "echo OXIO-GUEST-BEGIN\n\
             sh {flags} -c '. /lib/oxio-guest.sh; . /test.sh' </dev/console >/dev/console 2>&1\n\
             report $?\n"
        );
        s
    }

    /// The QEMU command line after `qemu-system-x86_64`.
    pub(crate) fn qemu_command(
        &self,
        env: &GuestEnv,
        initrd: &Path,
        serial: &Path,
    ) -> Vec<OsString> {
        // no_timer_check: under TCG on a loaded host the boot-time IO-APIC timer check can
        // miss its window and panic ("IO-APIC + timer doesn't work!"); seen in CI-like runs.
        let mut cmdline =
            String::from("console=ttyS0 panic=-1 oops=panic loglevel=4 no_timer_check");
        for arg in &self.kernel_args {
            cmdline.push(' ');
            cmdline.push_str(arg);
        }
        let mut machine = self.machine.clone();
        let mut args: Vec<OsString> = Vec::new();
        if self.shared_memory {
            machine.push_str(",memory-backend=oxio-mem");
            args.push("-object".into());
            args.push(
                format!(
                    "memory-backend-memfd,id=oxio-mem,size={}M,share=on",
                    self.memory_mib
                )
                .into(),
            );
        }
        let mut serial_arg = OsString::from("file:");
        serial_arg.push(serial);
        let fixed: [OsString; 22] = [
            "-accel".into(),
            "tcg".into(),
            "-machine".into(),
            machine.into(),
            "-m".into(),
            self.memory_mib.to_string().into(),
            "-smp".into(),
            self.smp.to_string().into(),
            "-nodefaults".into(),
            "-no-reboot".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            serial_arg,
            "-device".into(),
            "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
            "-kernel".into(),
            env.kernel_image.clone().into(),
            "-initrd".into(),
            initrd.into(),
            "-append".into(),
            cmdline.into(),
        ];
        args.extend(fixed);
        args.extend(self.qemu_args.iter().cloned());
        args
    }
}
