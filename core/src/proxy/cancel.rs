//! Cancel keys: each session's client gets a `BackendKeyData` the proxy made up, mapped here to the
//! upstream backend's own pid and key.
//!
//! Cancel requests are unauthenticated by design (whoever knows a key may cancel that backend's query), so
//! the upstream's keys never leave the proxy: a cancel request with a key the proxy did not issue, or issued
//! to a session that has ended, is dropped without touching the server, and a flood of random keys opens no
//! upstream connection. A known key is forwarded once at a time (a repeat while one is on its way is
//! dropped), so one client cannot make the proxy open connections without bound either.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ring::rand::SecureRandom as _;
use tokio::io::AsyncWriteExt as _;

use super::accounting::SessionLog;
use super::session::SessionError;
use super::{CANCEL_TIMEOUT, Proxy};
use crate::protocol;

/// The key a client gets: backend pid and secret key, 4 bytes each (protocol 3.0's shape).
pub(crate) type ClientKey = [u8; 8];

/// The issued keys of open sessions.
#[derive(Default)]
pub(crate) struct CancelKeys {
    issued: Mutex<HashMap<ClientKey, Arc<Upstream>>>,
}

/// What a client key stands for.
pub(crate) struct Upstream {
    /// The upstream's `BackendKeyData` body: its pid, then its secret key (as long as the server made it).
    key: Vec<u8>,
    /// Whether a cancel for this session is being forwarded now.
    forwarding: AtomicBool,
}

/// A key issued to one session; withdrawn when the session ends.
pub(crate) struct Issued {
    keys: Arc<CancelKeys>,
    key: ClientKey,
}

impl Issued {
    /// The `BackendKeyData` body for the client.
    pub(crate) fn client_key(&self) -> ClientKey {
        self.key
    }
}

impl Drop for Issued {
    fn drop(&mut self) {
        crate::connect::lock(&self.keys.issued).remove(&self.key);
    }
}

/// A cancel request the proxy will forward; `Drop` lets the next one through.
pub(crate) struct Forwarding(Arc<Upstream>);

impl Forwarding {
    /// The upstream's pid and key, for the cancel request sent to the server.
    pub(crate) fn upstream_key(&self) -> &[u8] {
        &self.0.key
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.0.forwarding.store(false, Ordering::Release);
    }
}

impl CancelKeys {
    /// Issues a fresh random key for a session whose backend has `upstream_key` (its `BackendKeyData`
    /// body); `None` only when the system has no random numbers.
    pub(crate) fn issue(self: &Arc<Self>, upstream_key: Vec<u8>) -> Option<Issued> {
        let random = ring::rand::SystemRandom::new();
        let upstream = Arc::new(Upstream {
            key: upstream_key,
            forwarding: AtomicBool::new(false),
        });
        let mut issued = crate::connect::lock(&self.issued);
        loop {
            let mut key: ClientKey = [0; 8];
            random.fill(&mut key).ok()?;
            // A positive pid, as PostgreSQL's are (clients may print or compare it as one).
            key[0] &= 0x7f;
            if key[..4] == [0; 4] || issued.contains_key(&key) {
                continue;
            }
            issued.insert(key, upstream);
            return Some(Issued {
                keys: self.clone(),
                key,
            });
        }
    }

    /// The upstream key to cancel for a client's request, if the proxy issued `key` to an open session and
    /// no cancel for it is on its way already.
    pub(crate) fn forward(&self, key: &[u8]) -> Option<Forwarding> {
        let key: ClientKey = key.try_into().ok()?;
        let upstream = crate::connect::lock(&self.issued).get(&key)?.clone();
        let idle = upstream
            .forwarding
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        idle.then_some(Forwarding(upstream))
    }

    /// How many keys are issued now.
    #[cfg(test)]
    fn len(&self) -> usize {
        crate::connect::lock(&self.issued).len()
    }
}

impl Proxy {
    /// Forwards a client's cancel request to the server over a new connection, if its key is one the proxy
    /// issued to an open session and no cancel for that session is on its way; then waits for the server to
    /// close it (it answers nothing). Any other key is dropped without contacting the server.
    pub(super) async fn forward_cancel(
        &self,
        key: &[u8],
        log: &mut SessionLog,
    ) -> Result<(), SessionError> {
        let Some(forwarding) = self.shared.cancel_keys.forward(key) else {
            metrics::counter!(crate::metrics::PROXY_CANCEL_REQUESTS, "outcome" => "dropped")
                .increment(1);
            // Logged at debug: a flood of random keys must not flood the log either.
            log.quiet = true;
            return Err(SessionError::Client(
                "a cancel request for no open session (or one already on its way): dropped".into(),
            ));
        };
        metrics::counter!(crate::metrics::PROXY_CANCEL_REQUESTS, "outcome" => "forwarded")
            .increment(1);
        let upstream_key = forwarding.upstream_key();
        log.upstream_pid = upstream_key
            .get(..4)
            .and_then(|pid| Some(i32::from_be_bytes(pid.try_into().ok()?)));
        let forwarded = tokio::time::timeout(CANCEL_TIMEOUT, async {
            let mut upstream = self.shared.target.open().await?;
            upstream
                .write_all(&protocol::cancel_request(upstream_key))
                .await?;
            let mut rest = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut upstream, &mut rest).await;
            Ok::<_, SessionError>(())
        })
        .await;
        match forwarded {
            Ok(result) => result,
            Err(_) => Err(SessionError::Upstream(
                "the cancel request timed out".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_issued_keys_of_open_sessions_are_forwarded_and_one_at_a_time() {
        // Proves: an issued key maps to the upstream's key, once until that forward is done; an unknown
        // key, a key of the wrong length and the key of an ended session map to nothing; issued keys are
        // distinct and their pids positive.
        let keys = Arc::new(CancelKeys::default());
        let upstream = vec![0, 0, 0, 42, 9, 9, 9, 9];
        let issued = keys.issue(upstream.clone()).expect("a key");
        let other = keys.issue(vec![0, 0, 0, 43, 1, 1, 1, 1]).expect("a key");
        assert_ne!(issued.client_key(), other.client_key());
        assert!(issued.client_key()[0] < 0x80);

        let forwarding = keys.forward(&issued.client_key()).expect("known");
        assert_eq!(forwarding.upstream_key(), upstream);
        assert!(
            keys.forward(&issued.client_key()).is_none(),
            "forwarded twice at once"
        );
        drop(forwarding);
        assert!(keys.forward(&issued.client_key()).is_some());

        assert!(keys.forward(&[1, 2, 3, 4, 5, 6, 7, 8]).is_none());
        assert!(keys.forward(&issued.client_key()[..7]).is_none());
        let ended = issued.client_key();
        drop(issued);
        assert!(keys.forward(&ended).is_none());
        assert_eq!(keys.len(), 1);
    }
}
