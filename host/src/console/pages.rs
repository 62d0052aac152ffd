//! The console's HTML, rendered on the server with maud (compiled into the
//! binary, every value escaped): the layout, sign-in, the tenants overview,
//! a tenant's plugins and charts, the deliveries table (one row function
//! serves the page and its live updates), and one delivery's attempts as a
//! timeline of log lines and host calls.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::assets::url;
use super::session::Session;
use crate::admin::SearchParams;
use crate::domain::EventKind;
use crate::engine::tail::TailEvent;
use crate::storage::{AuditEntry, DeliveryDetail, DeliveryStatus, Found, Page, TenantActivity};

fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn tenant_url(tenant: &str) -> String {
    format!("/console/tenants/{}", seg(tenant))
}

/// `2026-12-02T15:51:39.123Z` as `2026-12-02 15:51:39`.
fn when(at: &str) -> String {
    at.get(..19).unwrap_or(at).replace('T', " ")
}

fn badge(status: &str) -> Markup {
    let class = match status {
        "done" | "active" | "ok" => "ok",
        "failed" | "refused" | "rejected" => "bad",
        "held" | "paused" | "removed" => "held",
        _ => "wait",
    };
    html! { span class={ "badge " (class) } { (status) } }
}

fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// The frame of every page: the bar (breadcrumbs, sign-out) and `main`.
fn layout(title: &str, session: Option<&Session>, crumbs: &[(String, String)], main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Switchboard" }
                link rel="stylesheet" href=(url("uPlot.min.css"));
                link rel="stylesheet" href=(url("console.css"));
                script src=(url("uPlot.iife.min.js")) defer {}
                script src=(url("console.js")) defer {}
            }
            body {
                header.top {
                    a.brand href="/console/tenants" { "Switchboard" }
                    nav aria-label="breadcrumbs" {
                        @for (href, label) in crumbs {
                            span.sep { "›" }
                            a href=(href) { (label) }
                        }
                    }
                    @if let Some(s) = session {
                        form.signout method="post" action="/console/sign-out" {
                            (csrf_field(s))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (main) }
            }
        }
    }
}

pub fn sign_in(csrf: &str, error: Option<&str>) -> Markup {
    let main = html! {
        form.card.signin method="post" action="/console/sign-in" {
            h1 { "Sign in" }
            p.muted { "Use the server's admin token (" code { "admin_token" } " in its config), or a tenant's API token (" code { "sbt_…" } ")." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            label for="token" { "Token" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            input type="hidden" name="csrf" value=(csrf);
            button.primary type="submit" { "Sign in" }
        }
    };
    layout("Sign in", None, &[], main)
}

pub fn error(status: StatusCode, message: &str) -> Markup {
    let main = html! {
        section.card {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error role="alert" { (message) }
            p { a href="/console/tenants" { "Back to the tenants" } }
        }
    };
    layout("Error", None, &[], main)
}

/// One tenant on the overview.
#[derive(Debug)]
pub struct TenantRow {
    /// Tenant id.
    pub name: String,
    /// Its recent activity.
    pub activity: TenantActivity,
    /// Plugins serving.
    pub plugins: usize,
    /// Paused plugins.
    pub paused: Vec<String>,
}

pub fn tenants(session: &Session, rows: &[TenantRow]) -> Markup {
    let main = html! {
        h1 { "Tenants" }
        div.scroll {
            table #tenants {
                thead { tr { th { "Tenant" } th.num { "Events/min" } th.num { "Failure rate (1 h)" } th.num { "Plugins" } th { "Paused" } } }
                tbody {
                    @for t in rows {
                        @let a = &t.activity;
                        tr {
                            td { a href=(tenant_url(&t.name)) { (t.name) } }
                            td.num { (format!("{:.1}", a.events_10m as f64 / 10.0)) }
                            td.num {
                                @if a.attempts_1h == 0 { span.muted { "—" } }
                                @else { (format!("{:.1} %", 100.0 * a.failures_1h as f64 / a.attempts_1h as f64)) }
                            }
                            td.num { (t.plugins) }
                            td {
                                @for p in &t.paused { (badge("paused")) " " (p) " " }
                                @if t.paused.is_empty() { span.muted { "none" } }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Tenants", Some(session), &[("/console/tenants".into(), "Tenants".into())], main)
}

fn crumbs(tenant: &str) -> Vec<(String, String)> {
    vec![
        ("/console/tenants".into(), "Tenants".into()),
        (tenant_url(tenant), tenant.to_string()),
    ]
}

pub fn tenant(session: &Session, tenant: &str, plugins: &[Value], audit: &[AuditEntry], notice: Option<&str>) -> Markup {
    let base = tenant_url(tenant);
    let main = html! {
        @if let Some(n) = notice { p.notice role="status" { (n) } }
        div.heading {
            h1 { (tenant) }
            a.button href={ (base) "/deliveries" } { "Deliveries" }
        }
        h2 { "Plugins" }
        div.scroll {
            table #plugins {
                thead { tr { th { "Plugin" } th { "Version" } th { "Status" } th { "Last error" } th.num { "Held" } th {} } }
                tbody {
                    @for p in plugins {
                        @let name = p["name"].as_str().unwrap_or_default();
                        @let status = p["status"].as_str().unwrap_or_default();
                        tr data-plugin=(name) {
                            td { (name) }
                            td { code { (p["hash"].as_str().map(|h| &h[..h.len().min(12)]).unwrap_or("—")) } }
                            td { (badge(status)) div.muted.small { (p["summary"].as_str().unwrap_or_default()) } }
                            td.small { (p["delivery"]["last_error"].as_str().unwrap_or("")) }
                            td.num { (p["delivery"]["held"].as_i64().unwrap_or(0)) }
                            td {
                                @if status == "paused" {
                                    form method="post" action={ (base) "/plugins/" (seg(name)) "/resume" } {
                                        (csrf_field(session))
                                        button.primary type="submit" { "Resume" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Last hour" }
        div #charts data-src={ (base) "/activity.json" } {
            figure { figcaption { "Events per second" } div.chart data-chart="events" {} }
            figure { figcaption { "Ack to done, ms (p50, p99)" } div.chart data-chart="latency" {} }
            figure { figcaption { "Failed attempts per plugin" } div.chart data-chart="failures" {} }
        }
        h2 { "Audit log" }
        @if audit.is_empty() { p.muted { "Nothing resumed, replayed, deployed or changed yet." } }
        @else {
            div.scroll {
                table #audit {
                    thead { tr { th { "When (UTC)" } th { "Who" } th { "What" } th { "On" } th { "Result" } } }
                    tbody {
                        @for e in audit {
                            tr {
                                td.nowrap { (when(&e.at)) }
                                td { code { (e.actor) } }
                                td { (e.action) }
                                td { code { (e.target) } }
                                td.small { @if e.result == "ok" { (badge("ok")) } @else { span.error { (e.result) } } }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(tenant, Some(session), &crumbs(tenant), main)
}

/// A deliveries table row (the page's and the live updates').
#[allow(clippy::too_many_arguments)]
fn row(tenant: &str, id: i64, at: &str, plugin: &str, kind: &str, from: &str, to: &str, body: &str, status: &str) -> Markup {
    html! {
        tr id={ "d-" (id) } {
            td { a href={ (tenant_url(tenant)) "/deliveries/" (id) } { (id) } }
            td.nowrap { (when(at)) }
            td { (plugin) }
            td.nowrap { (kind) }
            td.nowrap { (from) " → " (to) }
            td.body { (body) }
            td { (badge(status)) }
        }
    }
}

fn found_row(tenant: &str, f: &Found) -> Markup {
    let d = &f.delivery;
    row(
        tenant,
        d.id,
        &f.received_at,
        &d.plugin,
        &f.kind,
        &f.from,
        &f.to,
        &f.body,
        d.status.as_str(),
    )
}

/// A row for an attempt that just ended.
pub fn live_row(tenant: &str, e: &TailEvent) -> Markup {
    row(tenant, e.delivery_id, &e.at, &e.plugin, e.kind, &e.from, &e.to, &e.body, e.outcome)
}

fn query(params: &SearchParams) -> String {
    serde_urlencoded::to_string(params).unwrap_or_default()
}

pub fn deliveries(session: &Session, tenant: &str, params: &SearchParams, plugins: &[String], page: &Page, live: bool) -> Markup {
    let base = format!("{}/deliveries", tenant_url(tenant));
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let selected = |o: &Option<String>, x: &str| o.as_deref() == Some(x);
    let live_src = live.then(|| {
        let mut p = params.clone();
        p.before = None;
        format!("{base}/live?{}", query(&p))
    });
    let older = page.next.map(|n| {
        let mut p = params.clone();
        p.before = Some(n.to_string());
        format!("{base}?{}", query(&p))
    });
    let main = html! {
        h1 { "Deliveries" }
        form.filters method="get" action=(base) {
            label { "Number" input type="search" name="number" value=(v(&params.number)) placeholder="+1512…"; }
            label { "Body text" input type="search" name="text" value=(v(&params.text)) placeholder="confirm"; }
            label { "Kind" select name="kind" {
                option value="" { "any" }
                @for k in EventKind::ALL.into_iter().chain([EventKind::Timer]) { option value=(k.seed_name()) selected[selected(&params.kind, k.seed_name())] { (k.seed_name()) } }
            } }
            label { "Plugin" select name="plugin" {
                option value="" { "any" }
                @for p in plugins { option value=(p) selected[selected(&params.plugin, p)] { (p) } }
            } }
            label { "Status" select name="status" {
                option value="" { "any" }
                @for s in DeliveryStatus::ALL { option value=(s.as_str()) selected[selected(&params.status, s.as_str())] { (s.as_str()) } }
            } }
            label { "Since" input type="text" name="since" value=(v(&params.since)) placeholder="1h, 7d or RFC 3339"; }
            label { "Until" input type="text" name="until" value=(v(&params.until)) placeholder="RFC 3339 or 15m"; }
            div.actions { button.primary type="submit" { "Search" } a href=(base) { "Clear" } }
        }
        p #live.muted data-src=[live_src.as_ref()] {
            @if live { "Live: new deliveries appear at the top as they run." } @else { "Not live: this page ends in the past." }
        }
        div.scroll {
            table #deliveries {
                thead { tr { th { "Id" } th { "Time (UTC)" } th { "Plugin" } th { "Kind" } th { "From → to" } th { "Body" } th { "Status" } } }
                tbody { @for f in &page.deliveries { (found_row(tenant, f)) } }
            }
        }
        @if page.deliveries.is_empty() { p.muted #empty { "No delivery matches." } }
        @if let Some(o) = older { p.pager { a.button href=(o) { "Older →" } } }
    };
    let mut c = crumbs(tenant);
    c.push((base.clone(), "Deliveries".into()));
    layout("Deliveries", Some(session), &c, main)
}

/// A log line or host call on an attempt's timeline, by when it started.
fn timeline(attempt: &crate::storage::Attempt) -> Markup {
    let mut items: Vec<(f64, Markup)> = Vec::new();
    for l in attempt.logs.as_array().into_iter().flatten() {
        let level = l["level"].as_str().unwrap_or_default();
        let m = html! {
            span class={ "kind log " (level) } { "log." (level) }
            span.what { (l["message"].as_str().unwrap_or_default()) }
        };
        items.push((l["at_ms"].as_f64().unwrap_or_default(), m));
    }
    for c in attempt.calls.as_array().into_iter().flatten() {
        let ok = c["ok"].as_bool().unwrap_or(false);
        let m = html! {
            span class={ "kind call " @if ok { "ok" } @else { "bad" } } { (c["call"].as_str().unwrap_or_default()) }
            span.what { (c["args"].as_str().unwrap_or_default()) }
            span.result { "→ " (c["result"].as_str().unwrap_or_default()) " (" (format!("{:.1}", c["ms"].as_f64().unwrap_or_default())) " ms)" }
        };
        items.push((c["at_ms"].as_f64().unwrap_or_default(), m));
    }
    items.sort_by(|a, b| a.0.total_cmp(&b.0));
    html! {
        @if items.is_empty() { p.muted { "No log lines and no host calls." } }
        ol.timeline {
            @for (at, m) in items { li { span.at { "+" (format!("{at:.1}")) " ms" } (m) } }
        }
    }
}

pub fn delivery(session: &Session, tenant: &str, detail: &DeliveryDetail, replayed_from: Option<i64>) -> Markup {
    let d = &detail.delivery;
    let base = format!("{}/deliveries", tenant_url(tenant));
    let payload = serde_json::to_string_pretty(&detail.event).unwrap_or_default();
    let main = html! {
        @if let Some(from) = replayed_from {
            p.notice role="status" { "Replayed: this is a new delivery of the event of " a href={ (base) "/" (from) } { "delivery " (from) } "." }
        }
        @if matches!(d.status, DeliveryStatus::Pending | DeliveryStatus::Running | DeliveryStatus::Verifying) {
            p #unfinished.muted data-reload="1" { "This delivery has not finished: the page reloads until it does." }
        }
        div.heading {
            h1 { "Delivery " (d.id) " " (badge(d.status.as_str())) }
            form method="post" action={ (base) "/" (d.id) "/replay" } {
                (csrf_field(session))
                button.primary type="submit" { "Replay" }
            }
        }
        dl.facts {
            dt { "Plugin" } dd #plugin { (d.plugin) }
            dt { "Version" } dd { code { (d.plugin_hash.as_deref().unwrap_or("—")) } }
            dt { "Event" } dd { code { (d.event_id) } }
            dt { "Created" } dd { (when(&d.created_at)) }
            dt { "Attempts" } dd { (d.attempts) " (" (d.failures) " failed)" }
            @if let Some(e) = &d.last_error { dt { "Last error" } dd.error { (e) } }
            @if let Some(n) = &d.next_attempt_at { dt { "Next attempt" } dd { (when(n)) } }
        }
        h2 { "Attempts" }
        @if detail.attempts.is_empty() { p.muted { "No attempt has ended yet." } }
        @for a in &detail.attempts {
            section.attempt.card id={ "attempt-" (a.attempt) } {
                h3 { "Attempt " (a.attempt) " " (badge(a.outcome)) " " span.muted { (when(&a.started_at)) ", " (format!("{:.0}", a.duration_ms)) " ms" } }
                p.muted.small {
                    "wasm " (format!("{:.2}", a.wasm_us as f64 / 1000.0)) " ms · peak memory "
                    (format!("{:.1}", a.peak_memory_bytes as f64 / 1_048_576.0)) " MiB · version "
                    code { (a.plugin_hash.as_deref().map(|h| &h[..h.len().min(12)]).unwrap_or("—")) }
                }
                @if let Some(e) = &a.error { p.error { (e) } }
                (timeline(a))
            }
        }
        h2 { "Event" }
        pre.payload { (payload) }
    };
    let mut c = crumbs(tenant);
    c.push((base.clone(), "Deliveries".into()));
    c.push((format!("{base}/{}", d.id), format!("#{}", d.id)));
    layout(&format!("Delivery {}", d.id), Some(session), &c, main)
}
