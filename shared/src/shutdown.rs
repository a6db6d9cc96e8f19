//! One shutdown signal for a whole process.
//!
//! Every long-lived loop holds a [`Shutdown`] and selects on [`Shutdown::wait`] first
//! (`select! { biased; _ = shutdown.wait() => ..., ... }`). On shutdown a service stops
//! taking new work, finishes what is in flight, persists its positions and returns.

use tokio::sync::watch;

/// The receiving side: cheap to clone, one per task.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending side, held by whoever decides that the process stops.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A new trigger and its first receiver.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Tells every receiver to stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// A further receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// A receiver that never fires (for tools and tests that run to completion).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive for the life of the program so that `wait` pends forever.
        std::mem::forget(tx);
        Shutdown { rx }
    }

    /// True once shutdown was requested (or the trigger is dropped), as
    /// [`Shutdown::wait`] would resolve; a cheap check for loops that must not poll
    /// `wait` between every two items.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Resolves when shutdown is requested (or the trigger is dropped).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which also means: stop.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// A shutdown that fires on SIGINT or SIGTERM. The trigger lives in a background task.
pub fn on_signals() -> Shutdown {
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing in-flight work");
        trigger.trigger();
    });
    shutdown
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_after_trigger() {
        let (trigger, mut shutdown) = channel();
        let mut other = trigger.subscribe();
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        shutdown.wait().await;
        other.wait().await;
        assert!(shutdown.is_triggered());
        let (trigger, shutdown) = channel();
        drop(trigger);
        assert!(
            shutdown.is_triggered(),
            "a dropped trigger means stop, as in wait"
        );
    }
}
