//! OmniXtend from inside a guest: the guest's virtio-net NIC sits on a host TAP device, where
//! `oxio memory-node` serves memory over raw Ethernet (EtherType 0xAAAA). The guest's
//! requester crosses a real kernel NIC driver, QEMU and the host's TAP both ways.

// Helpers of a test may unwrap too: a panic there is a test failure.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oxio_guest_harness::{static_binary, Guest, HostTap};

const GUEST_MAC: &str = "52:54:00:0a:0a:01";

/// `oxio memory-node` on the TAP, killed on drop.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn memory_node(tap: &HostTap, size: &str, log: &std::path::Path) -> Node {
    let oxio = static_binary("oxio", "oxio").unwrap();
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(oxio)
        .args([
            "memory-node",
            "--netdev",
            tap.name(),
            "--size",
            size,
            "--stats-interval",
            "0",
        ])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    // The node is ready once its packet socket is bound; give it a moment and check it lives.
    std::thread::sleep(Duration::from_millis(500));
    let mut node = Node(child);
    assert!(
        node.0.try_wait().unwrap().is_none(),
        "oxio memory-node exited at start"
    );
    node
}

#[test]
fn omnixtend_probe_in_a_guest_verifies_a_host_memory_node_over_a_tap() {
    let dir = tempfile::tempdir().unwrap();
    let tap = HostTap::create().unwrap();
    let node_mac = tap.mac().unwrap();
    let log = dir.path().join("node.log");
    let _node = memory_node(&tap, "64M", &log);
    let outcome = Guest::new("omnixtend-probe-tap")
        .modules(["virtio_pci", "virtio_net"])
        .static_binary("oxio", "oxio")
        .qemu_args(tap.qemu_args(GUEST_MAC))
        .script(&format!(
            "ip link set eth0 up
             oxio omnixtend probe --netdev eth0 --mac {node_mac} --size 16M --verify"
        ))
        .timeout(Duration::from_secs(300))
        .run()
        .unwrap();
    let node_log = std::fs::read_to_string(&log).unwrap_or_default();
    outcome
        .expect_pass()
        .map_err(|e| format!("{e}\n--- memory node ---\n{node_log}"))
        .unwrap();
}
