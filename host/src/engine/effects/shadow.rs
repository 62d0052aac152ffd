//! What a version did to the world, for comparing two versions on one event:
//! [`Footprint`] (the SMS it sent, the HTTP requests it made, its outcome),
//! [`Witness`] (the serving version's effects, noted on their way through to
//! [`Live`]), and [`Shadow`] (a shadow version's effects: SMS and HTTP other
//! than GET/HEAD are noted and answered locally, never made; reads of
//! JustCall and GET/HEAD requests go to the world as the serving version's
//! would).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::Digest as _;

use super::{Effects, Live, OutgoingSms};
use crate::engine::bindings::http;
use crate::engine::justcall::{ApiMessage, JustCallError};
use crate::sync::lock;

/// One act of a version: an SMS or an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "call", rename_all = "kebab-case")]
pub enum Act {
    /// An SMS to `to` saying `body`.
    Sms {
        /// Recipient.
        to: String,
        /// Text.
        body: String,
    },
    /// An HTTP request.
    Http {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// SHA-256 of the body, hex (the body itself may hold anything).
        body_sha256: String,
    },
}

/// What one version did on one event, in order, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Footprint {
    /// Its SMS and HTTP requests, in the order made.
    pub acts: Vec<Act>,
    /// `done`, or the failure.
    pub outcome: String,
}

/// Acts noted as they happen, the plugin's secrets scrubbed from them;
/// shared with whoever reads them after the run.
#[derive(Debug, Clone, Default)]
pub struct Acts(Arc<Mutex<Vec<Act>>>, crate::engine::secrets::PluginSecrets);

impl Acts {
    /// Notes acts with these values (the plugin's secrets) scrubbed.
    pub fn hiding(secrets: crate::engine::secrets::PluginSecrets) -> Acts {
        Acts(Arc::default(), secrets)
    }

    fn scrub(&self, text: &str) -> String {
        crate::engine::secrets::scrub(&self.1, text).into_owned()
    }

    fn sms(&self, sms: &OutgoingSms<'_>) {
        lock(&self.0).push(Act::Sms {
            to: sms.to.to_string(),
            body: self.scrub(sms.body),
        });
    }

    fn http(&self, req: &http::Request) {
        lock(&self.0).push(Act::Http {
            method: req.method.to_ascii_uppercase(),
            url: self.scrub(&req.url),
            body_sha256: hex::encode(sha2::Sha256::digest(&req.body)),
        });
    }

    /// The acts so far, with the outcome: the run's footprint.
    pub fn footprint(&self, outcome: String) -> Footprint {
        Footprint {
            acts: lock(&self.0).clone(),
            outcome: self.scrub(&outcome),
        }
    }
}

/// The serving version's effects while a shadow is deployed beside it: every
/// call goes on to `Live` unchanged, and its SMS and HTTP requests are noted.
#[derive(Debug)]
pub struct Witness {
    live: Live,
    acts: Acts,
}

impl Witness {
    /// Notes what `live` is asked to do in `acts`.
    pub fn new(live: Live, acts: Acts) -> Witness {
        Witness { live, acts }
    }
}

#[async_trait::async_trait]
impl Effects for Witness {
    async fn sms_send(&self, sms: OutgoingSms<'_>, deadline: Instant) -> Result<String, JustCallError> {
        self.acts.sms(&sms);
        self.live.sms_send(sms, deadline).await
    }

    async fn sms_get(&self, id: &str, deadline: Instant) -> Result<ApiMessage, JustCallError> {
        self.live.sms_get(id, deadline).await
    }

    async fn sms_list(&self, page: u32, per_page: u32, deadline: Instant) -> Result<Vec<ApiMessage>, JustCallError> {
        self.live.sms_list(page, per_page, deadline).await
    }

    async fn http_send(&self, req: http::Request, deadline: Instant, max_body: usize) -> Result<http::Response, http::HttpError> {
        self.acts.http(&req);
        self.live.http_send(req, deadline, max_body).await
    }
}

/// A shadow version's effects: side effects are noted and answered
/// locally; reads go to `live` (built without a journal).
#[derive(Debug)]
pub struct Shadow {
    live: Live,
    acts: Acts,
    allowed: Vec<crate::config::AllowedHost>,
    sent: std::sync::atomic::AtomicU32,
}

impl Shadow {
    /// Notes side effects in `acts`; reads through `live`; refuses HTTP
    /// outside `allowed` as live would.
    pub fn new(live: Live, acts: Acts, allowed: Vec<crate::config::AllowedHost>) -> Shadow {
        Shadow {
            live,
            acts,
            allowed,
            sent: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl Effects for Shadow {
    async fn sms_send(&self, sms: OutgoingSms<'_>, _deadline: Instant) -> Result<String, JustCallError> {
        self.acts.sms(&sms);
        let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(format!("shadow-{n}"))
    }

    async fn sms_get(&self, id: &str, deadline: Instant) -> Result<ApiMessage, JustCallError> {
        self.live.sms_get(id, deadline).await
    }

    async fn sms_list(&self, page: u32, per_page: u32, deadline: Instant) -> Result<Vec<ApiMessage>, JustCallError> {
        self.live.sms_list(page, per_page, deadline).await
    }

    async fn http_send(&self, req: http::Request, deadline: Instant, max_body: usize) -> Result<http::Response, http::HttpError> {
        self.acts.http(&req);
        if matches!(req.method.to_ascii_uppercase().as_str(), "GET" | "HEAD") {
            return self.live.http_send(req, deadline, max_body).await;
        }
        // Refused as live would refuse it, else answered 200, empty.
        let parsed = super::parse(&req)?;
        crate::engine::egress::listed(&parsed.url, &self.allowed).map_err(|r| http::HttpError::NotAllowed(r.to_string()))?;
        Ok(http::Response {
            status: 200,
            headers: vec![],
            body: vec![],
        })
    }
}
