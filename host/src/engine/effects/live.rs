//! [`Live`]: the server's effects. SMS go to the tenant's JustCall account and
//! HTTP to allow-listed hosts only (checked after DNS and on every redirect);
//! with a delivery, each side effect is journaled so a retry never repeats
//! one, and an unknown SMS outcome is reconciled before any resend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::journal::Journal;
use super::{Effects, OutgoingSms, Parsed, parse};
use crate::config::{AllowedHost, Manifest};
use crate::engine::bindings::http;
use crate::engine::justcall::{ApiMessage, JustCallError};
use crate::engine::tenant::Tenant;

/// Redirects a plugin's request may follow.
pub const MAX_REDIRECTS: u32 = 5;

/// The effects of one live invocation.
#[derive(Debug)]
pub struct Live {
    tenant: Arc<Tenant>,
    http: reqwest::Client,
    manifest: Arc<Manifest>,
    journal: Option<Journal>,
    /// Side effects so far: the next one's journal sequence number.
    seq: AtomicU32,
    /// The delivery's W3C trace context, sent on every HTTP request.
    traceparent: Option<reqwest::header::HeaderValue>,
}

impl Live {
    /// Effects for one invocation of a plugin of `tenant` that may reach the
    /// `allowed_hosts` of its `manifest` through `http` (a client with
    /// redirects disabled and the public-only resolver). With a `journal`,
    /// side effects are journaled under the delivery; without, they are
    /// simply made.
    pub fn new(tenant: Arc<Tenant>, http: reqwest::Client, manifest: Arc<Manifest>, journal: Option<Journal>) -> Live {
        Live {
            tenant,
            http,
            manifest,
            journal,
            seq: AtomicU32::new(0),
            traceparent: None,
        }
    }

    /// Sends `traceparent` (the delivery's trace, when traces are exported)
    /// on every HTTP request: the host's, whatever the plugin set.
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Live {
        self.traceparent = traceparent.and_then(|t| reqwest::header::HeaderValue::from_str(&t).ok());
        self
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl Effects for Live {
    async fn sms_send(&self, sms: OutgoingSms<'_>, deadline: Instant) -> Result<String, JustCallError> {
        let seq = self.next_seq();
        let justcall = &self.tenant.justcall;
        match &self.journal {
            Some(journal) => journal.sms_send(justcall, seq, sms, deadline).await,
            None => justcall.send(sms.from, sms.to, sms.body, sms.media, deadline).await,
        }
    }

    async fn sms_get(&self, id: &str, deadline: Instant) -> Result<ApiMessage, JustCallError> {
        self.tenant.justcall.get(id, deadline).await
    }

    async fn sms_list(&self, page: u32, per_page: u32, deadline: Instant) -> Result<Vec<ApiMessage>, JustCallError> {
        self.tenant.justcall.list(page, per_page, deadline).await
    }

    async fn http_send(&self, req: http::Request, deadline: Instant, max_body: usize) -> Result<http::Response, http::HttpError> {
        // Reads are made again on a retry; anything else is a side effect.
        let read_only = matches!(req.method.to_ascii_uppercase().as_str(), "GET" | "HEAD");
        let seq = (!read_only && self.journal.is_some()).then(|| self.next_seq());
        let out = Outbound {
            client: &self.http,
            allowed: self.manifest.allowed_hosts.as_slice(),
            traceparent: self.traceparent.as_ref(),
        };
        match (&self.journal, seq) {
            (Some(journal), Some(seq)) => {
                journal
                    .http(seq, req, async |req| perform(&out, req, deadline, max_body).await)
                    .await
            }
            _ => perform(&out, req, deadline, max_body).await,
        }
    }
}

/// Where a plugin's requests go, and what the host adds to them.
struct Outbound<'a> {
    client: &'a reqwest::Client,
    allowed: &'a [AllowedHost],
    traceparent: Option<&'a reqwest::header::HeaderValue>,
}

/// Makes one request, following redirects by hand so every hop passes the
/// same egress checks; reads at most `max_body` bytes of the response. The
/// journal hashed the request as the plugin made it, before `traceparent`.
async fn perform(out: &Outbound<'_>, req: http::Request, deadline: Instant, max_body: usize) -> Result<http::Response, http::HttpError> {
    let Outbound {
        client,
        allowed,
        traceparent,
    } = *out;
    let Parsed {
        mut url,
        mut method,
        mut headers,
    } = parse(&req)?;
    let origin = url.origin();
    if let Some(tp) = traceparent {
        headers.insert("traceparent", tp.clone());
    }
    let mut body = Some(req.body);
    // Follow redirects by hand, so every hop passes the same checks.
    let mut hops = 0;
    let mut resp = loop {
        if let Err(reason) = crate::engine::egress::check(&url, allowed).await {
            let reason = if hops > 0 {
                format!("redirect refused: {reason}")
            } else {
                reason.to_string()
            };
            return Err(http::HttpError::NotAllowed(reason));
        }
        let mut builder = client
            .request(method.clone(), url.clone())
            .timeout(deadline.saturating_duration_since(Instant::now()))
            .headers(headers.clone());
        if let Some(b) = &body {
            builder = builder.body(b.clone());
        }
        let sent = match crate::engine::lanes::on_io(builder.send()).await {
            Ok(sent) => sent,
            Err(closed) => return Err(http::HttpError::Transport(closed.to_string())),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(http::HttpError::Timeout),
            Err(e) => return Err(http::HttpError::Transport(e.without_url().to_string())),
        };
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_string);
        match (resp.status().is_redirection(), location) {
            (true, Some(location)) if hops < MAX_REDIRECTS => {
                hops += 1;
                url = match url.join(&location) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => u,
                    _ => {
                        return Err(http::HttpError::NotAllowed(format!("redirect refused: bad location `{location}`")));
                    }
                };
                // Credentials were meant for the origin the plugin addressed.
                if url.origin() != origin {
                    for name in super::CREDENTIAL_HEADERS {
                        headers.remove(name);
                    }
                }
                if matches!(resp.status().as_u16(), 301..=303) && method != reqwest::Method::HEAD {
                    method = reqwest::Method::GET;
                    body = None;
                }
            }
            _ => break resp,
        }
    };
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let cap = max_body;
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    return Err(http::HttpError::ResponseTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Err(http::HttpError::Timeout),
            Err(e) => return Err(http::HttpError::Transport(e.without_url().to_string())),
        }
    }
    Ok(http::Response { status, headers, body })
}
