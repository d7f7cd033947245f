//! What a running pair (or the server) reports for `mirror-agent status`: written by its engine
//! and network threads, read by the control socket.

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// The state of one pair, as users read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Starting: scanning its directory, or not connected yet.
    #[default]
    Starting,
    /// Connected to its peer.
    Connected,
    /// The connection dropped or could not be made; retrying with backoff.
    Reconnecting,
    /// Serving clients (the server section).
    Listening,
    /// Paused by the user; changes are found and sent on resume.
    Paused,
    /// Halted for safety (root vanished, replaced or emptied): `resume` accepts it as it is.
    Halted,
    /// Kept failing; not retried until `resume`.
    Failed,
    /// Between two attempts after a failure.
    Restarting,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Connected => "connected",
            State::Reconnecting => "reconnecting",
            State::Listening => "listening",
            State::Paused => "paused",
            State::Halted => "halted",
            State::Failed => "failed",
            State::Restarting => "restarting",
        }
    }
}

/// One pair's status.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub name: String,
    pub state: State,
    /// The local directory (pairs) or the served root (server).
    pub local: String,
    /// The peer: `host:port/remote` for pairs, the listen address for the server.
    pub peer: String,
    /// The first scan of the local directory is done.
    pub scanned: bool,
    /// When it was last fully in sync with a peer (Unix seconds).
    pub last_sync: Option<u64>,
    /// Local changes not yet read plus transfers and retries under way.
    pub pending: u64,
    /// True conflicts resolved since the pair started.
    pub conflicts: u64,
    /// Peer names that are another spelling of one of ours on this file system (not synced).
    #[serde(default)]
    pub collisions: u64,
    /// Connected peers (the server: clients).
    pub peers: u64,
    pub last_error: Option<String>,
    /// Restarts after failures.
    pub restarts: u32,
}

/// A [`Report`] shared by the threads of one pair.
#[derive(Clone, Debug, Default)]
pub struct Status {
    inner: Arc<Mutex<Report>>,
    /// Set once the first scan is done (read without the lock by the readiness check).
    scanned: Arc<AtomicBool>,
    /// Told (without blocking: a full channel already holds a wake-up) whenever `state` or
    /// `scanned` changes, so the daemon reports readiness and status when they change instead
    /// of looking every so often.
    changed: Option<Sender<()>>,
}

impl Status {
    pub fn new(name: &str, local: &str, peer: &str) -> Status {
        let s = Status::default();
        s.update(|r| {
            r.name = name.into();
            r.local = local.into();
            r.peer = peer.into();
        });
        s
    }

    /// [`Status::new`] that tells `changed` whenever its state or first scan changes.
    pub fn watched(name: &str, local: &str, peer: &str, changed: Sender<()>) -> Status {
        Status { changed: Some(changed), ..Status::new(name, local, peer) }
    }

    pub fn update(&self, f: impl FnOnce(&mut Report)) {
        let moved = {
            let mut r = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let before = (r.state, r.scanned);
            f(&mut r);
            (r.state, r.scanned) != before
        };
        // After the change is visible: whoever wakes from this sees it.
        if moved && let Some(tx) = &self.changed {
            let _ = tx.try_send(());
        }
    }

    pub fn get(&self) -> Report {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_state(&self, state: State) {
        self.update(|r| r.state = state);
    }

    pub fn set_scanned(&self) {
        self.scanned.store(true, Ordering::SeqCst);
        self.update(|r| r.scanned = true);
    }

    pub fn scanned(&self) -> bool {
        self.scanned.load(Ordering::SeqCst)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_is_told_of_state_changes_only_and_never_blocks_a_writer() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let s = Status::watched("p", "/l", "h", tx);
        assert!(rx.try_recv().is_err(), "creating it is no change");
        s.update(|r| r.pending = 7);
        assert!(rx.try_recv().is_err(), "progress is not a change of state");
        s.set_state(State::Connected);
        s.set_state(State::Reconnecting);
        s.set_scanned();
        assert!(rx.try_recv().is_ok(), "one wake-up stands for all three");
        assert!(rx.try_recv().is_err());
        s.clone().set_state(State::Connected);
        assert!(rx.try_recv().is_ok(), "a clone tells the same watcher");
    }
}
