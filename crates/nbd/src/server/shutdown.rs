//! [`Shutdown`]: a cloneable signal that tells connections to drain and close.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;

/// Fires every [`Shutdown`] made from it.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Asks every connection to finish its in-flight requests and close.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    /// Another [`Shutdown`] listening to this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: Some(self.tx.subscribe()),
            wait: Default::default(),
        }
    }
}

/// A shutdown signal a connection polls; [`Shutdown::never`] never fires.
pub struct Shutdown {
    rx: Option<watch::Receiver<bool>>,
    /// Behind a mutex only so `Shutdown` is `Sync` (it is only ever used through `&mut`).
    wait: std::sync::Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("fired", &self.is_fired())
            .finish()
    }
}

impl Clone for Shutdown {
    fn clone(&self) -> Self {
        Shutdown {
            rx: self.rx.clone(),
            wait: Default::default(),
        }
    }
}

impl Shutdown {
    /// A trigger and a signal connected to it.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (
            ShutdownTrigger { tx },
            Shutdown {
                rx: Some(rx),
                wait: Default::default(),
            },
        )
    }

    /// A signal that never fires.
    pub fn never() -> Shutdown {
        Shutdown {
            rx: None,
            wait: Default::default(),
        }
    }

    /// Whether the trigger has fired.
    pub fn is_fired(&self) -> bool {
        self.rx.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Ready once the trigger fires (pending forever for [`Shutdown::never`] or when the
    /// trigger was dropped without firing).
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(rx) = &self.rx else {
            return Poll::Pending;
        };
        if *rx.borrow() {
            return Poll::Ready(());
        }
        let slot = self.wait.get_mut().unwrap_or_else(|p| p.into_inner());
        let wait = slot.get_or_insert_with(|| {
            let mut rx = rx.clone();
            Box::pin(async move {
                if rx.wait_for(|fired| *fired).await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
        });
        wait.as_mut().poll(cx)
    }

    /// Waits until the trigger fires.
    pub async fn fired(&mut self) {
        std::future::poll_fn(|cx| self.poll_fired(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_all_subscribers() {
        let (trigger, mut a) = Shutdown::new();
        let mut b = trigger.subscribe();
        let c = a.clone();
        assert!(!c.is_fired());
        trigger.fire();
        a.fired().await;
        b.fired().await;
        assert!(c.is_fired());
        assert!(!Shutdown::never().is_fired());
    }
}
