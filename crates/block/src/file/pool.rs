//! The thread-pool engine: a few worker threads per queue run blocking syscalls.

use std::os::fd::BorrowedFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{sync_io, FileInner};
use crate::{BlockError, BlockQueue, Completion, Notifier, QueueFull, Request, Result};

/// Worker threads per queue: enough to overlap a few syscalls, few enough not to swamp a
/// small machine when many connections each open a queue.
const WORKERS: usize = 4;

#[derive(Debug)]
pub(super) struct PoolQueue {
    tx: Option<Sender<Request>>,
    done: Arc<Mutex<Vec<Completion>>>,
    notifier: Notifier,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
    depth: usize,
}

impl PoolQueue {
    pub(super) fn new(inner: Arc<FileInner>, depth: usize) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let rx = Arc::new(Mutex::new(rx));
        let done = Arc::new(Mutex::new(Vec::new()));
        let notifier = Notifier::new()?;
        let mut workers = Vec::new();
        for i in 0..WORKERS.min(depth) {
            let ctx = (
                Arc::clone(&inner),
                Arc::clone(&rx),
                Arc::clone(&done),
                notifier.try_clone()?,
            );
            let handle = std::thread::Builder::new()
                .name(format!("oxio-file-{i}"))
                .spawn(move || worker(ctx.0, ctx.1, ctx.2, ctx.3))
                .map_err(|e| BlockError::io("start an I/O worker thread", e))?;
            workers.push(handle);
        }
        Ok(PoolQueue {
            tx: Some(tx),
            done,
            notifier,
            workers,
            in_flight: 0,
            depth,
        })
    }
}

fn worker(
    inner: Arc<FileInner>,
    rx: Arc<Mutex<Receiver<Request>>>,
    done: Arc<Mutex<Vec<Completion>>>,
    notifier: Notifier,
) {
    loop {
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(mut req) = next else { return };
        let result = inner
            .caps
            .check(&req.op)
            .and_then(|()| sync_io::execute(&inner, &mut req.op));
        done.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Completion::new(req, result));
        notifier.signal();
    }
}

impl BlockQueue for PoolQueue {
    fn submit(&mut self, req: Request) -> std::result::Result<(), QueueFull> {
        if self.in_flight >= self.depth {
            return Err(QueueFull(req));
        }
        let Some(tx) = &self.tx else {
            return Err(QueueFull(req));
        };
        match tx.send(req) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(mpsc::SendError(req)) => Err(QueueFull(req)),
        }
    }

    fn commit(&mut self) -> Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.notifier.clear();
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let n = done.len();
        out.append(&mut done);
        self.in_flight -= n;
        n
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.notifier.fd()
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn depth(&self) -> usize {
        self.depth
    }
}

impl Drop for PoolQueue {
    fn drop(&mut self) {
        // Closing the channel ends the workers once the queued requests are done.
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
