//! The deliveries table's live rows: the tail's attempt ends for one tenant
//! that match the page's filters, each sent as the same table row HTML the
//! page renders, over Server-Sent Events. A watcher that falls behind is
//! told so and dropped, as on the admin tail; dispatch never waits for it.

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::StreamExt as _;

use super::{ConsoleError, SignedIn, pages};
use crate::admin::SearchParams;
use crate::engine::state::AppState;
use crate::engine::tail::TailEvent;
use crate::storage::{DeliveryStatus, Search, normalise_number};

/// Whether an attempt's end belongs in a table showing `search`'s results.
fn matches(search: &Search, e: &TailEvent) -> bool {
    let words_match = |text: &str| {
        let body: Vec<String> = e.body.split(|c: char| !c.is_alphanumeric()).map(str::to_lowercase).collect();
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .all(|w| body.iter().any(|b| b.starts_with(&w.to_lowercase())))
    };
    let status = match e.outcome {
        "done" => DeliveryStatus::Done,
        _ => DeliveryStatus::Failed,
    };
    search.number.as_deref().is_none_or(|n| {
        let n = normalise_number(n);
        e.from == n || e.to == n
    }) && search.text.as_deref().is_none_or(words_match)
        && search.kind.is_none_or(|k| k.seed_name() == e.kind)
        && search.plugin.as_deref().is_none_or(|p| p == e.plugin)
        && search.status.is_none_or(|s| s == status)
}

pub async fn rows(
    State(state): State<AppState>,
    signed: SignedIn,
    Path(tenant): Path<String>,
    Query(params): Query<SearchParams>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>>, ConsoleError> {
    signed.0.caller.may(&tenant, crate::admin::Scope::Read)?;
    crate::admin::known_tenant(&state, &tenant)?;
    let search = params.to_search()?;
    let own = tenant.clone();
    let stream = state
        .tail
        .follow(move |e| e.tenant == own && matches(&search, e))
        .map(move |ended| {
            Ok(match ended {
                Ok(e) => SseEvent::default().event("row").data(pages::live_row(&tenant, &e).into_string()),
                Err(n) => {
                    let notice =
                        format!("Live updates stopped: {n} deliveries went by faster than this page could show them. Reload to go on.");
                    SseEvent::default().event("dropped").data(notice)
                }
            })
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    fn ended(body: &str, outcome: &'static str) -> TailEvent {
        TailEvent {
            tenant: "acme".into(),
            plugin: "crm".into(),
            delivery_id: 1,
            event_id: "e".into(),
            kind: "sms.received",
            from: "+15125551234".into(),
            to: "+15125550100".into(),
            body: body.into(),
            outcome,
            error: None,
            at: String::new(),
            ms: 1.0,
            logs: vec![],
            calls: vec![],
        }
    }

    #[test]
    fn live_rows_follow_the_same_filters_as_the_search() {
        let e = ended("Please CONFIRM, thanks", "done");
        let s = |f: fn(&mut Search)| {
            let mut s = Search::default();
            f(&mut s);
            s
        };
        assert!(matches(&Search::default(), &e));
        assert!(matches(&s(|s| s.text = Some("confirm".into())), &e));
        assert!(matches(&s(|s| s.text = Some("conf than".into())), &e));
        assert!(!matches(&s(|s| s.text = Some("firm".into())), &e));
        assert!(matches(&s(|s| s.number = Some("1 (512) 555-1234".into())), &e));
        assert!(!matches(&s(|s| s.number = Some("+15125559999".into())), &e));
        assert!(matches(&s(|s| s.kind = Some(EventKind::Received)), &e));
        assert!(!matches(&s(|s| s.kind = Some(EventKind::OptOut)), &e));
        assert!(!matches(&s(|s| s.plugin = Some("router".into())), &e));
        assert!(matches(&s(|s| s.status = Some(DeliveryStatus::Done)), &e));
        assert!(!matches(&s(|s| s.status = Some(DeliveryStatus::Failed)), &e));
        assert!(matches(&s(|s| s.status = Some(DeliveryStatus::Failed)), &ended("x", "failed")));
    }
}
