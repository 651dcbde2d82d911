//! OmniXtend from inside a guest: the guest's virtio-net NIC sits on a host TAP device, where
//! `oxio memory-node` serves memory over raw Ethernet (EtherType 0xAAAA). The guest's
//! requester crosses a real kernel NIC driver, QEMU and the host's TAP both ways.
//!
//! `oxmem-nbd --backend omnixtend` in the guest is the seed's program end to end: OmniXtend
//! remote memory as `/dev/nbdN`, carrying ext4.

// Helpers of a test may unwrap too: a panic there is a test failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use oxio_guest_harness::{Guest, HostTap};

mod common;

use common::{ext4_round_trip, memory_node, nbd_guest, start_oxmem};

const GUEST_MAC: &str = "52:54:00:0a:0a:01";

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

#[test]
fn oxmem_nbd_puts_ext4_on_omnixtend_memory_served_from_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let tap = HostTap::create().unwrap();
    let node_mac = tap.mac().unwrap();
    let log = dir.path().join("node.log");
    let _node = memory_node(&tap, "128M", &log);
    let omx = format!("--backend omnixtend --netdev eth0 --mac {node_mac}");
    let script = "ip link set eth0 up\n".to_string()
        // The seed's invocation: ioctl attach of the whole memory to /dev/nbd0.
        + &start_oxmem(&format!("{omx} --size 64M --device /dev/nbd0"), &["nbd0"])
        + &ext4_round_trip("nbd0", 4)
        + "stop_oxmem\n"
        + "grep -q 'OmniXtend connection closed' /tmp/oxmem.log\n"
        // The rest of the node's memory, split in two, by netlink; one connection to the node.
        + &start_oxmem(
            &format!("{omx} --size 64M --base 0x4000000 --num 2 --attach netlink --device /dev/nbd1"),
            &["nbd1", "nbd2"],
        )
        + "oxio-guest fill /dev/nbd2 0 1M 33\n"
        + &ext4_round_trip("nbd1", 2)
        + "oxio-guest check /dev/nbd2 0 1M 33\n"
        + "stop_oxmem\n";
    let outcome = nbd_guest("nbd-oxmem-omnixtend")
        .modules(["virtio_pci", "virtio_net"])
        .qemu_args(tap.qemu_args(GUEST_MAC))
        .timeout(Duration::from_secs(400))
        .script(&script)
        .run()
        .unwrap();
    let node_log = std::fs::read_to_string(&log).unwrap_or_default();
    outcome
        .expect_pass()
        .map_err(|e| format!("{e}\n--- memory node ---\n{node_log}"))
        .unwrap();
}
