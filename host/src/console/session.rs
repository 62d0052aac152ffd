//! Console sessions: a random id in an HttpOnly, SameSite=Strict cookie,
//! each with who signed in (the operator or a tenant's token) and its own
//! CSRF token that every state-changing form carries, and
//! the sign-in form's own double-submitted token. Sessions live in memory
//! (a restart signs everyone out), are looked up by the SHA-256 of their id,
//! and end after [`TTL`] or at sign-out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::admin::Caller;

/// How long a session lasts from sign-in.
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; past it, signing in ends the oldest.
pub const MAX_SESSIONS: usize = 1024;
/// The session cookie's name.
pub const COOKIE: &str = "sb_console";
/// The sign-in form's cookie (its CSRF token, double-submitted).
pub const SIGN_IN_COOKIE: &str = "sb_console_signin";

/// A random token: 32 bytes from the OS, hex.
pub fn token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator");
    hex::encode(bytes)
}

/// Whether `given` is `expected`, in time that does not depend on where they differ.
pub fn same(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[derive(Debug, Clone)]
struct Entry {
    csrf: String,
    caller: Caller,
    started: Instant,
}

/// A signed-in session, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token its forms must carry.
    pub csrf: String,
    /// Who signed in: the operator, or a tenant's token (its tenant and scopes).
    pub caller: Caller,
}

/// The signed-in sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Starts a session for `caller`; returns its id (for the cookie).
    pub fn start(&self, caller: Caller) -> String {
        let id = token();
        let mut all = crate::sync::lock(&self.by_hash);
        all.retain(|_, e| e.started.elapsed() < TTL);
        if all.len() >= MAX_SESSIONS
            && let Some(oldest) = all.iter().min_by_key(|(_, e)| e.started).map(|(k, _)| *k)
        {
            all.remove(&oldest);
        }
        all.insert(
            key(&id),
            Entry {
                csrf: token(),
                caller,
                started: Instant::now(),
            },
        );
        id
    }

    /// The live session with this id, if there is one.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut all = crate::sync::lock(&self.by_hash);
        let k = key(id);
        match all.get(&k) {
            Some(e) if e.started.elapsed() < TTL => Some(Session {
                csrf: e.csrf.clone(),
                caller: e.caller.clone(),
            }),
            Some(_) => {
                all.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends the session with this id.
    pub fn end(&self, id: &str) {
        crate::sync::lock(&self.by_hash).remove(&key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends() {
        let sessions = Sessions::default();
        let id = sessions.start(Caller::Operator);
        let s = sessions.get(&id).expect("just started");
        assert_eq!(s.caller, Caller::Operator);
        assert_eq!(s.csrf.len(), 64);
        assert_ne!(s.csrf, id);
        assert!(sessions.get(&token()).is_none());
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn the_oldest_session_gives_way_past_the_cap() {
        let sessions = Sessions::default();
        let first = sessions.start(Caller::Operator);
        for _ in 0..MAX_SESSIONS {
            sessions.start(Caller::Operator);
        }
        assert!(sessions.get(&first).is_none());
        assert_eq!(crate::sync::lock(&sessions.by_hash).len(), MAX_SESSIONS);
    }
}
