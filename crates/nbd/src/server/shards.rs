//! Single-threaded runtimes, one per thread, that a [`super::Server`] spreads its connections
//! over (see [`super::Server::shards`]).

use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::watch;

/// `n` threads, each driving its own single-threaded tokio runtime until [`Self::stop`].
#[derive(Debug)]
pub struct ShardRuntimes {
    handles: Vec<Handle>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl ShardRuntimes {
    /// Starts `n` (at least 1) threads named `{name}-{i}`.
    ///
    /// # Errors
    /// When a runtime or a thread cannot be created (out of memory, file descriptors or
    /// threads).
    pub fn start(n: usize, name: &str) -> std::io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut shards = ShardRuntimes {
            handles: Vec::new(),
            stop,
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let rt = Builder::new_current_thread().enable_all().build()?;
            shards.handles.push(rt.handle().clone());
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let _ = stopped.wait_for(|&s| s).await;
                    });
                })?;
            shards.threads.push(thread);
        }
        Ok(shards)
    }

    /// Handles to spawn work on, one per runtime.
    #[must_use]
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }

    /// Stops every runtime (tasks still on them are dropped) and waits for the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ShardRuntimes {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::ShardRuntimes;

    #[test]
    fn tasks_run_on_the_shard_threads_and_stop_joins_them() {
        let shards = ShardRuntimes::start(2, "shard-test").unwrap();
        let names: Vec<String> = shards
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = std::sync::mpsc::channel();
                h.spawn(async move {
                    let name = std::thread::current().name().map(str::to_owned);
                    tx.send(name).unwrap();
                });
                rx.recv().unwrap().unwrap()
            })
            .collect();
        assert_eq!(names, ["shard-test-0", "shard-test-1"]);
        shards.stop();
    }
}
