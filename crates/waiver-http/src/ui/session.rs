//! Browser sessions: a random id in an HttpOnly, SameSite=Strict cookie names a session held
//! in memory, which keeps either the SHA-256 of the token the person signed in with (never the
//! token) or who the identity provider said signed in, and a CSRF token every form must echo.
//! Each request resolves the token (or the person in the directory) again, so revoking it
//! (or offboarding them) ends the session at once; the provider's logout ends it too.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// A session ends this long after sign-in, however busy.
const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);
/// …or after this long without a request.
const IDLE: Duration = Duration::from_secs(3600);
/// Most sessions held; beyond it the oldest are dropped.
const MAX_SESSIONS: usize = 50_000;

pub(crate) const COOKIE: &str = "waiver_session";
pub(crate) const LOGIN_COOKIE: &str = "waiver_login";

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub auth: SessionAuth,
    pub csrf: String,
    started: Instant,
    seen: Instant,
}

/// How a session's person signed in.
#[derive(Debug, Clone)]
pub(crate) enum SessionAuth {
    /// With an API token (its SHA-256).
    Token(String),
    /// Through the identity provider.
    Provider(Arc<SignedIn>),
}

/// A person the identity provider signed in.
#[derive(Debug)]
pub(crate) struct SignedIn {
    pub verified: crate::oidc::Verified,
    /// For the provider's logout (`id_token_hint`).
    pub id_token: String,
}

/// Sessions by the SHA-256 of their id (a leaked memory dump does not yield cookies).
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, Session>>>);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

pub(crate) fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn key(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Equal without a timing signal on where they differ.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// Starts a session for the token with this hash; returns the cookie value.
    pub(crate) fn start(&self, token_hash: String) -> String {
        self.begin(SessionAuth::Token(token_hash))
    }

    /// Starts a session for a person the provider signed in; returns the cookie value.
    pub(crate) fn start_signed_in(&self, signed_in: SignedIn) -> String {
        self.begin(SessionAuth::Provider(Arc::new(signed_in)))
    }

    /// Ends every session the provider's logout names: its session `sid`, or every session
    /// of subject `sub`, at `issuer`.
    pub(crate) fn end_provider_sessions(&self, issuer: &str, sid: Option<&str>, sub: Option<&str>) -> usize {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let before = held.len();
        held.retain(|_, s| match &s.auth {
            SessionAuth::Provider(p) => {
                let v = &p.verified;
                let named = match (sid, sub) {
                    (Some(sid), _) => v.sid.as_deref() == Some(sid),
                    (None, Some(sub)) => v.subject == sub,
                    (None, None) => false,
                };
                !(v.issuer == issuer && named)
            }
            SessionAuth::Token(_) => true,
        });
        before - held.len()
    }

    fn begin(&self, auth: SessionAuth) -> String {
        let id = random_token();
        let now = Instant::now();
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|_, s| live(s, now));
        if held.len() >= MAX_SESSIONS
            && let Some(oldest) = held.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| k.clone())
        {
            held.remove(&oldest);
        }
        held.insert(key(&id), Session { auth, csrf: random_token(), started: now, seen: now });
        id
    }

    /// The live session a cookie names, touched.
    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let k = key(id);
        match held.get_mut(&k) {
            Some(s) if live(s, now) => {
                s.seen = now;
                Some(s.clone())
            }
            Some(_) => {
                held.remove(&k);
                None
            }
            None => None,
        }
    }

    pub(crate) fn end(&self, id: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(id));
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.started) < ABSOLUTE && now.duration_since(s.seen) < IDLE
}

/// The value of cookie `name` in a `Cookie` header.
pub(crate) fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only_and_ends() {
        let sessions = Sessions::default();
        let id = sessions.start("hash".into());
        let s = sessions.get(&id).unwrap();
        assert!(matches!(&s.auth, SessionAuth::Token(h) if h == "hash"));
        assert_eq!(s.csrf.len(), 64);
        assert!(sessions.get("not-a-session").is_none());
        assert!(!sessions.0.lock().unwrap().contains_key(&id), "held by hash, not by the cookie value");
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn comparison_and_cookie_parsing() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(axum::http::header::COOKIE, "a=1; waiver_session=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
