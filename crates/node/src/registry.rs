//! Live sessions, found by connection id, subject, session (`jti`) or client address, with
//! the operations the control plane calls: disconnect, send, list.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;

/// An instruction to one session.
#[derive(Debug, Clone)]
pub enum Command {
    Close {
        code: u16,
        reason: String,
    },
    Send {
        payload: Bytes,
        binary: bool,
    },
    /// The live policy was swapped: re-check the session against it (revocations, the
    /// route's access rule, limits).
    PolicyChanged,
    /// The node drains: close within the drain window.
    Drain,
}

pub use palisade_plane::Selector;

/// Per-connection counters, shared between the session and the registry.
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    /// Bytes queued for the client and not yet written to the socket.
    pub buffered: AtomicU64,
    /// The most ever queued at once (a bounded-memory witness).
    pub buffered_peak: AtomicU64,
    /// Commands sent to the session, counted before each is sent: the session polls its
    /// channel (which takes the channel's lock) only while it has received fewer.
    pub commands: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub conn_id: String,
    pub subject: String,
    pub jti: Option<String>,
    pub client: IpAddr,
    pub route: String,
    pub started: SystemTime,
    pub counters: Arc<ConnCounters>,
}

struct Entry {
    info: SessionInfo,
    tx: flume::Sender<Command>,
}

impl Entry {
    fn send(&self, cmd: Command) -> bool {
        self.info.counters.commands.fetch_add(1, Ordering::Release);
        self.tx.send(cmd).is_ok()
    }
}

#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<String, Entry>>,
}

impl Registry {
    pub fn insert(&self, info: SessionInfo, tx: flume::Sender<Command>) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(info.conn_id.clone(), Entry { info, tx });
    }

    /// A refreshed session is found by its new token's `jti`.
    pub fn set_session(&self, conn_id: &str, jti: Option<String>) {
        if let Some(e) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get_mut(conn_id) {
            e.info.jti = jti;
        }
    }

    pub fn remove(&self, conn_id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(conn_id);
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn matches(sel: &Selector, i: &SessionInfo) -> bool {
        match sel {
            Selector::Conn(c) => i.conn_id == *c,
            Selector::Subject(s) => i.subject == *s,
            Selector::Session(j) => i.jti.as_deref() == Some(j.as_str()),
            Selector::Client(ip) => i.client == *ip,
            Selector::All => true,
        }
    }

    /// Sends `cmd` to every matching session; returns how many got it.
    pub fn dispatch(&self, sel: &Selector, cmd: Command) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Selector::Conn(c) = sel {
            return map.get(c).map_or(0, |e| usize::from(e.send(cmd)));
        }
        map.values().filter(|e| Self::matches(sel, &e.info)).filter(|e| e.send(cmd.clone())).count()
    }

    /// Matching sessions, sorted by connection id, from `after` (exclusive), at most `limit`.
    pub fn list(&self, sel: &Selector, after: Option<&str>, limit: usize) -> Vec<SessionInfo> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<SessionInfo> = map
            .values()
            .filter(|e| Self::matches(sel, &e.info))
            .filter(|e| after.is_none_or(|a| e.info.conn_id.as_str() > a))
            .map(|e| e.info.clone())
            .collect();
        v.sort_by(|a, b| a.conn_id.cmp(&b.conn_id));
        v.truncate(limit);
        v
    }

    /// Sum of bytes queued for clients across sessions.
    pub fn buffered_bytes(&self) -> u64 {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|e| e.info.counters.buffered.load(Ordering::Relaxed)).sum()
    }
}
