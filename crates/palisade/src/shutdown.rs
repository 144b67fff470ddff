//! How the long-running commands learn to stop.

/// SIGTERM and Ctrl-C (SIGINT), listened for from the moment it is made: the node, the
/// controller and `palisade dev` make it before they start anything, so a signal that
/// arrives while they start (a supervisor that stops what it just started, once the dev
/// fleet's `endpoints.json` or a listening port says it is up) drains instead of killing
/// the process with the default action.
pub(crate) struct Shutdown {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

/// Installs the handlers now; [`Shutdown::wait`] returns at the first signal.
pub(crate) fn listen() -> Shutdown {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        Shutdown { signals: signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?))).ok() }
    }
    #[cfg(not(unix))]
    {
        Shutdown {}
    }
}

impl Shutdown {
    pub(crate) async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.signals {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
