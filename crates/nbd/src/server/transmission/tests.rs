//! Tests of the transmission loop that need a paused clock or a misbehaving backend.

use std::io::{IoSlice, IoSliceMut};

use oxio_block::memory::MemoryBackend;
use oxio_block::{BlockBackend, Capabilities, DirectAccess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::wire::SimpleReply;

/// RAM whose direct stores always fail (as when no memory is left for a new chunk).
#[derive(Debug)]
struct Full(MemoryBackend);

impl BlockBackend for Full {
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn open_queue(&self, depth: usize) -> oxio_block::Result<Box<dyn BlockQueue>> {
        self.0.open_queue(depth)
    }
    fn describe(&self) -> String {
        "full".into()
    }
    fn direct(&self) -> Option<&dyn DirectAccess> {
        Some(self)
    }
}

impl DirectAccess for Full {
    fn read_with(
        &self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.0.direct().unwrap().read_with(offset, len, f)
    }
    fn write_with(
        &self,
        _: u64,
        _: u64,
        _: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
    ) -> oxio_block::Result<io::Result<usize>> {
        Err(BlockError::NoSpace)
    }
}

#[tokio::test]
async fn a_direct_write_the_storage_refuses_is_skipped_and_answered() {
    let export = Arc::new(Export::new(
        "",
        Arc::new(Full(MemoryBackend::new(8 << 20).unwrap())),
    ));
    let (mut client, server) = tokio::io::duplex(64 << 10);
    let task = tokio::spawn(serve_transmission(
        server,
        export,
        TransmissionMode::simple(),
        Shutdown::never(),
    ));
    let mut reqs = Vec::new();
    for (cookie, command, length) in [
        (1, Command::Write, 3 << 20),
        (2, Command::Read, 4096),
        (3, Command::Write, 512),
        (4, Command::Disc, 0),
    ] {
        RequestHeader {
            flags: 0,
            command,
            cookie,
            offset: 4096,
            length,
        }
        .emit(&mut reqs, false);
        if command == Command::Write {
            reqs.resize(reqs.len() + usize::try_from(length).unwrap(), 0xab);
        }
    }
    let writer = tokio::spawn(async move {
        client.write_all(&reqs).await.unwrap();
        let mut replies = Vec::new();
        client.read_to_end(&mut replies).await.unwrap();
        replies
    });
    let stats = task.await.unwrap().unwrap();
    assert!(stats.clean_disconnect);
    let replies = writer.await.unwrap();
    // Replies in request order here: 16-byte headers, the READ's 4096 zero bytes.
    assert_eq!(replies.len(), 16 + (16 + 4096) + 16);
    let first = SimpleReply::parse(&replies[..16]).unwrap();
    assert_eq!((first.cookie, first.error), (1, errno::ENOSPC));
    let read = SimpleReply::parse(&replies[16..32]).unwrap();
    assert_eq!((read.cookie, read.error), (2, 0));
    assert!(
        replies[32..32 + 4096].iter().all(|&b| b == 0),
        "nothing stored"
    );
    let last = SimpleReply::parse(&replies[32 + 4096..]).unwrap();
    assert_eq!((last.cookie, last.error), (3, errno::ENOSPC));
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_up_on_a_client_that_stops_reading() {
    let export = Arc::new(Export::new(
        "",
        Arc::new(MemoryBackend::new(64 << 20).unwrap()),
    ));
    let (mut client, server) = tokio::io::duplex(64 << 10);
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(serve_transmission(
        server,
        export,
        TransmissionMode::simple(),
        shutdown,
    ));
    let mut reqs = Vec::new();
    for i in 0..32u64 {
        let h = RequestHeader {
            flags: 0,
            command: Command::Read,
            cookie: i,
            offset: i << 20,
            length: 1 << 20,
        };
        h.emit(&mut reqs, false);
    }
    // 32 MiB of replies against a 64 KiB pipe the client never reads.
    client.write_all(&reqs).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    trigger.fire();
    let result = task.await.unwrap();
    assert!(
        matches!(&result, Err(ServerError::Protocol(m)) if m.contains("undelivered")),
        "{result:?}"
    );
}
