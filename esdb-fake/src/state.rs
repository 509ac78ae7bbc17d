//! The fake server's shared state: the store behind a mutex, a change signal for
//! subscriptions, injected faults, and a bounded record of append attempts (for tests).

use std::collections::VecDeque;
use std::net::SocketAddr;

use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::Status;
use uuid::Uuid;

use crate::db::{Db, Expect, Outcome, Proposed};

/// Faults queued at once (more are ignored).
pub const FAULTS_MAX: usize = 1_024;
/// Append attempts remembered (the oldest are forgotten).
pub const ATTEMPTS_MAX: usize = 4_096;
/// ESDB's default `MaxAppendSize`.
pub const DEFAULT_MAX_APPEND_SIZE: usize = 1 << 20;

/// How an append meets an injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Refused with UNAVAILABLE, nothing written (a server busy or shutting down).
    Unavailable,
    /// Refused with ESDB's not-leader error naming this server as the leader (as a follower
    /// does during an election); nothing written. The client reconnects to the named leader.
    NotLeader,
    /// Written, then answered with UNAVAILABLE (the reply was lost on the way back).
    LoseReply,
}

/// One `Streams.Append` call as received (before faults and expectations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendAttempt {
    pub stream: String,
    /// The ids received (up to the message that went over the maximum append size, if any).
    pub event_ids: Vec<Uuid>,
    /// Its size as counted against the maximum append size.
    pub size: usize,
}

pub struct State {
    pub(crate) db: Mutex<Db>,
    /// Bumped after every write; subscriptions wait on it.
    pub(crate) changes: watch::Sender<u64>,
    faults: Mutex<VecDeque<Fault>>,
    attempts: Mutex<VecDeque<AppendAttempt>>,
    /// The address clients reach this server at (named in not-leader errors).
    pub(crate) public: SocketAddr,
    pub(crate) max_append_size: usize,
}

impl State {
    pub fn new(public: SocketAddr, max_append_size: usize) -> State {
        State {
            db: Mutex::new(Db::default()),
            changes: watch::channel(0).0,
            faults: Mutex::new(VecDeque::new()),
            attempts: Mutex::new(VecDeque::new()),
            public,
            max_append_size,
        }
    }

    pub fn append(&self, stream: &str, expect: Expect, events: Vec<Proposed>) -> Outcome {
        let outcome = self.db.lock().append(stream, expect, events);
        self.changes.send_modify(|n| *n += 1);
        outcome
    }

    pub fn add_faults(&self, n: u32, fault: Fault) {
        let mut faults = self.faults.lock();
        for _ in 0..n {
            if faults.len() >= FAULTS_MAX {
                break;
            }
            faults.push_back(fault);
        }
    }

    pub fn take_fault(&self) -> Option<Fault> {
        self.faults.lock().pop_front()
    }

    pub fn pending_faults(&self) -> usize {
        self.faults.lock().len()
    }

    /// The error an append meets before anything is written, if the fault refuses it.
    pub fn refusal(&self, fault: Fault) -> Option<Status> {
        match fault {
            Fault::Unavailable => {
                Some(Status::unavailable("esdb-fake: server unavailable (injected)"))
            }
            Fault::NotLeader => Some(self.not_leader()),
            Fault::LoseReply => None,
        }
    }

    /// ESDB's not-leader error: `exception: not-leader` and the leader's endpoint in metadata.
    fn not_leader(&self) -> Status {
        let mut status = Status::not_found("Leader info available");
        let md = status.metadata_mut();
        md.insert("exception", MetadataValue::from_static("not-leader"));
        let host = self.public.ip().to_string();
        let port = self.public.port().to_string();
        if let (Ok(h), Ok(p)) = (MetadataValue::try_from(host), MetadataValue::try_from(port)) {
            md.insert("leader-endpoint-host", h);
            md.insert("leader-endpoint-port", p);
        }
        status
    }

    pub fn record_attempt(&self, stream: &str, event_ids: Vec<Uuid>, size: usize) {
        let mut attempts = self.attempts.lock();
        if attempts.len() >= ATTEMPTS_MAX {
            attempts.pop_front();
        }
        attempts.push_back(AppendAttempt { stream: stream.to_owned(), event_ids, size });
    }

    pub fn attempts(&self) -> Vec<AppendAttempt> {
        self.attempts.lock().iter().cloned().collect()
    }
}
