//! The Linux kernel's own NBD client against oxio's NBD server: `oxio serve` runs on the host
//! with a file backend, Debian's `nbd-client` inside a guest connects over `-netdev user` (the
//! host's 127.0.0.1 is 10.0.2.2 there) by netlink, by ioctl and with two connections, and the
//! guest makes, mounts and fills an ext4 filesystem. The host then checks the image itself:
//! `e2fsck -fn` and the bytes of a file the guest wrote, read back with `debugfs`.

// Helpers of a test may unwrap too: a panic there is a test failure.
#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxio_guest_harness::{find_program, pattern, static_binary, Guest};

const SEED: u64 = 0x0b10c;
const PATTERN_LEN: u64 = 4 << 20;

/// `oxio serve` on the host, killed on drop whatever happens.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    fn start(image: &Path, port: u16, log: &Path) -> Server {
        let oxio = static_binary("oxio", "oxio").unwrap();
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(oxio)
            .arg("serve")
            .arg("--backend")
            .arg(format!("file:{}", image.display()))
            .args(["--name", "disk", "--tcp", &format!("127.0.0.1:{port}")])
            .arg("--unix")
            .arg(image.with_extension("sock"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "oxio serve did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server(child)
    }

    /// SIGTERM (graceful drain) and a clean exit status.
    fn stop(mut self) {
        let pid = i32::try_from(self.0.id()).unwrap();
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.0.wait().unwrap();
        assert!(status.success(), "oxio serve exited with {status}");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn kernel_nbd_client_in_a_guest_fills_ext4_on_oxio_serve() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let port = free_port();
    let server_log = dir.path().join("server.log");
    let server = Server::start(&image, port, &server_log);

    let script = format!(
        "net_user_up
         # netlink attach (nbd-client's default), one connection
         nbd-client 10.0.2.2 {port} /dev/nbd0 -N disk
         [ \"$(cat /sys/block/nbd0/size)\" = 262144 ]
         mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/nbd0
         mount -t ext4 /dev/nbd0 /mnt
         dd if=/dev/urandom of=/mnt/random bs=1M count=16 2>/dev/null
         : > /mnt/pattern
         oxio-guest fill /mnt/pattern 0 {PATTERN_LEN} {SEED}
         mkdir /mnt/tree && cp -a /bin /lib /mnt/tree/
         md5sum /mnt/random > /tmp/random.md5
         umount /mnt
         nbd-client -d /dev/nbd0
         # ioctl attach (-L, nbd-client's NBD_DO_IT daemon) reads it all back
         nbd-client 10.0.2.2 {port} /dev/nbd1 -N disk -L
         # the daemon's NBD_DO_IT starts the device a moment after nbd-client returns
         wait_for /sys/block/nbd1/pid
         mount -t ext4 /dev/nbd1 /mnt
         md5sum -c /tmp/random.md5
         oxio-guest check /mnt/pattern 0 {PATTERN_LEN} {SEED}
         cmp /mnt/tree/bin/busybox /bin/busybox
         umount /mnt
         e2fsck -fn /dev/nbd1
         nbd-client -d /dev/nbd1
         # two connections (-C 2: the server advertises multi-conn), writes spread over both
         nbd-client 10.0.2.2 {port} /dev/nbd2 -N disk -C 2
         mount -t ext4 /dev/nbd2 /mnt
         dd if=/dev/urandom of=/mnt/multi bs=1M count=8 2>/dev/null
         md5sum /mnt/multi > /tmp/multi.md5
         umount /mnt
         echo 3 > /proc/sys/vm/drop_caches
         mount -t ext4 /dev/nbd2 /mnt
         md5sum -c /tmp/multi.md5
         oxio-guest check /mnt/pattern 0 {PATTERN_LEN} {SEED}
         umount /mnt
         nbd-client -d /dev/nbd2
         sleep 0.5"
    );
    let outcome = Guest::new("nbd-client-oxio-serve")
        .modules(["virtio_pci", "virtio_net"])
        .module_with_params("nbd", "nbds_max=4")
        .host_program("nbd-client")
        .host_program("mkfs.ext4")
        .host_program("e2fsck")
        .qemu_args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .script(&script)
        .timeout(Duration::from_secs(300))
        .run()
        .unwrap();
    let log = std::fs::read_to_string(&server_log).unwrap_or_default();
    outcome
        .expect_pass()
        .map_err(|e| format!("{e}\n--- oxio serve ---\n{log}"))
        .unwrap();
    server.stop();

    // The host checks the export's image on its own.
    let fsck = Command::new(find_program("e2fsck").unwrap())
        .arg("-fn")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "host e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let dumped = dir.path().join("pattern.out");
    let debugfs = Command::new(find_program("debugfs").unwrap())
        .arg("-R")
        .arg(format!("dump /pattern {}", dumped.display()))
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        debugfs.status.success(),
        "{}",
        String::from_utf8_lossy(&debugfs.stderr)
    );
    let bytes = std::fs::read(&dumped).unwrap();
    assert_eq!(bytes.len() as u64, PATTERN_LEN);
    assert_eq!(pattern::first_mismatch(&bytes, 0, SEED), None);
}
