//! The one shutdown signal: a watch channel wrapped in named types.
//!
//! [`Shutdown::trigger`] flips the flag once; every [`ShutdownSignal`] clone sees it, whether it
//! was waiting already or checks later. Dropping the [`Shutdown`] also counts as a trigger, so a
//! dropped server handle stops its tasks.

use tokio::sync::watch;

/// The sending side, owned by the server handle.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

/// A receiving side, cloned into every task that must stop.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A new, untriggered signal pair.
    pub fn new() -> (Shutdown, ShutdownSignal) {
        let (tx, rx) = watch::channel(false);
        (Shutdown { tx }, ShutdownSignal { rx })
    }

    /// Tells every signal holder to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl ShutdownSignal {
    /// Resolves once shutdown was triggered or the [`Shutdown`] was dropped.
    pub async fn triggered(&mut self) {
        // An error means the sender is gone, which is a shutdown too.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown was triggered already.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }
}
