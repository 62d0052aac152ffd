//! The web console at `/console` on the admin listener: routes, sign-in and
//! its session check, CSRF checks on every form that changes state, the
//! console's security headers and its embedded assets. The pages themselves
//! are rendered in [`pages`]; the data comes from the same storage calls and
//! engine handles as the admin API.

mod assets;
mod live;
mod pages;
pub mod session;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};

use crate::admin::{AdminError, Scope, SearchParams};
use crate::engine::state::AppState;
use session::{COOKIE, SIGN_IN_COOKIE, Session, Sessions, same};

/// The console's routes, to be nested at `/console`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/tenants") }))
        .route("/sign-in", get(sign_in_form).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/assets/{name}", get(assets::serve))
        .route("/tenants", get(tenants))
        .route("/tenants/{tenant}", get(tenant))
        .route("/tenants/{tenant}/activity.json", get(activity))
        .route("/tenants/{tenant}/plugins/{plugin}/resume", post(resume))
        .route("/tenants/{tenant}/deliveries", get(deliveries))
        .route("/tenants/{tenant}/deliveries/live", get(live::rows))
        .route("/tenants/{tenant}/deliveries/{id}", get(delivery))
        .route("/tenants/{tenant}/deliveries/{id}/replay", post(replay))
        .layer(axum::middleware::map_response(security_headers))
        .layer(Extension(Arc::new(Sessions::default())))
}

/// What the console answers when it cannot do what was asked: a page
/// saying why, or the sign-in page.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Not signed in (or the session ended).
    #[error("sign in first")]
    SignIn,
    /// A form arrived without the token the console put in it.
    #[error("this form did not come from the console, or its page is too old: reload the page and try again")]
    Csrf,
    /// What the admin API would have refused.
    #[error(transparent)]
    Admin(#[from] AdminError),
}

impl From<crate::storage::DbError> for ConsoleError {
    fn from(e: crate::storage::DbError) -> Self {
        ConsoleError::Admin(AdminError::Unavailable(e))
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::SignIn => return Redirect::to("/console/sign-in").into_response(),
            ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::Admin(AdminError::Locked(_)) => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::Admin(AdminError::Unauthorized(_)) => StatusCode::UNAUTHORIZED,
            ConsoleError::Admin(AdminError::Forbidden(_)) => StatusCode::FORBIDDEN,
            ConsoleError::Admin(AdminError::NotFound(_)) => StatusCode::NOT_FOUND,
            ConsoleError::Admin(AdminError::BadRequest(_)) => StatusCode::BAD_REQUEST,
            ConsoleError::Admin(AdminError::Conflict(_)) => StatusCode::CONFLICT,
            ConsoleError::Admin(AdminError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Admin(AdminError::Rejected(_)) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        (status, page(pages::error(status, &self.to_string()))).into_response()
    }
}

/// A signed-in request: its session, found from the cookie.
#[derive(Debug, Clone)]
pub struct SignedIn(pub Session);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        let sessions = parts.extensions.get::<Arc<Sessions>>().ok_or(ConsoleError::SignIn)?;
        let jar = CookieJar::from_headers(&parts.headers);
        let id = jar.get(COOKIE).ok_or(ConsoleError::SignIn)?;
        sessions.get(id.value()).map(SignedIn).ok_or(ConsoleError::SignIn)
    }
}

impl SignedIn {
    /// Refuses a form whose `csrf` is not this session's.
    fn check(&self, given: &str) -> Result<(), ConsoleError> {
        if same(given, &self.0.csrf) {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }

    /// Refuses unless who signed in may see `tenant` (and it exists).
    fn reads(&self, state: &AppState, tenant: &str) -> Result<(), ConsoleError> {
        self.0.caller.may(tenant, Scope::Read)?;
        Ok(crate::admin::known_tenant(state, tenant)?)
    }
}

/// A rendered page, never cached.
fn page(markup: maud::Markup) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(markup.into_string()))
}

/// What every console answer carries: no framing, no sniffing, no
/// referrer, and only the console's own scripts and styles.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The session cookie: HttpOnly, SameSite=Strict, only under `/console`,
/// and Secure when the console is served over TLS.
fn cookie(state: &AppState, name: &'static str, value: String) -> Cookie<'static> {
    let tls = state.config.tls.is_some() && matches!(state.config.admin_listen, crate::config::AdminListen::Public);
    Cookie::build((name, value))
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(tls)
        .build()
}

async fn sign_in_form(State(state): State<AppState>, jar: CookieJar) -> impl IntoResponse {
    let token = session::token();
    let jar = jar.add(cookie(&state, SIGN_IN_COOKIE, token.clone()));
    (jar, page(pages::sign_in(&token, None)))
}

#[derive(Debug, serde::Deserialize)]
struct SignInForm {
    token: String,
    #[serde(default)]
    csrf: String,
}

/// Signs in with the admin token (everything) or a tenant's token (its
/// tenant, within its scopes). Failures count toward the admin API's
/// lockout, exactly as a wrong bearer token does.
async fn sign_in(
    State(state): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    jar: CookieJar,
    Form(form): Form<SignInForm>,
) -> Result<Response, ConsoleError> {
    let expected = jar.get(SIGN_IN_COOKIE).map(|c| c.value().to_string()).unwrap_or_default();
    if expected.is_empty() || !same(&form.csrf, &expected) {
        return Err(ConsoleError::Csrf);
    }
    let caller = match crate::admin::auth::identify(&state, Some(form.token.trim())).await {
        Ok(caller) => caller,
        Err(refused) => {
            let (status, why) = match refused {
                AdminError::Locked(_) => (StatusCode::TOO_MANY_REQUESTS, refused.to_string()),
                AdminError::Unauthorized(w) if w.contains("off") => (StatusCode::UNAUTHORIZED, w.to_string()),
                AdminError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, refused.to_string()),
                _ => (StatusCode::UNAUTHORIZED, "That is not a valid token.".to_string()),
            };
            let fresh = session::token();
            let jar = jar.add(cookie(&state, SIGN_IN_COOKIE, fresh.clone()));
            return Ok((status, jar, page(pages::sign_in(&fresh, Some(&why)))).into_response());
        }
    };
    tracing::info!(actor = %caller.actor(), "console: signed in");
    let id = sessions.start(caller);
    let jar = jar
        .remove(Cookie::build(SIGN_IN_COOKIE).path("/console"))
        .add(cookie(&state, COOKIE, id));
    Ok((jar, Redirect::to("/console/tenants")).into_response())
}

#[derive(Debug, serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    signed: SignedIn,
    Extension(sessions): Extension<Arc<Sessions>>,
    jar: CookieJar,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    signed.check(&form.csrf)?;
    if let Some(id) = jar.get(COOKIE) {
        sessions.end(id.value());
    }
    let jar = jar.remove(Cookie::build(COOKIE).path("/console"));
    Ok((jar, Redirect::to("/console/sign-in")).into_response())
}

async fn tenants(State(state): State<AppState>, signed: SignedIn) -> Result<impl IntoResponse, ConsoleError> {
    // A tenant's token sees its own tenant only.
    let names: Vec<String> = match signed.0.caller.tenant() {
        Some(own) => vec![own.to_string()],
        None => state.tenants.keys().cloned().collect(),
    };
    let activity = state.db.tenant_activity(names, crate::storage::now_ms()).await?;
    let paused = state.db.paused_plugins().await?;
    let rows: Vec<pages::TenantRow> = activity
        .into_iter()
        .map(|(name, activity)| pages::TenantRow {
            plugins: state.registry.plugins(&name).len(),
            paused: paused.iter().filter(|(t, _)| *t == name).map(|(_, p)| p.clone()).collect(),
            name,
            activity,
        })
        .collect();
    Ok(page(pages::tenants(&signed.0, &rows)))
}

#[derive(Debug, Default, serde::Deserialize)]
struct Notice {
    resumed: Option<String>,
    released: Option<usize>,
}

async fn tenant(
    State(state): State<AppState>,
    signed: SignedIn,
    Path(tenant): Path<String>,
    Query(notice): Query<Notice>,
) -> Result<impl IntoResponse, ConsoleError> {
    signed.reads(&state, &tenant)?;
    let plugins = crate::admin::plugin_statuses(&state, &tenant).await?;
    let audit = state.db.audit_log(&tenant, None, 20).await?;
    let notice = notice
        .resumed
        .map(|p| format!("Resumed {p}: {} held deliveries released.", notice.released.unwrap_or(0)));
    Ok(page(pages::tenant(&signed.0, &tenant, &plugins, &audit, notice.as_deref())))
}

/// The charts' data: the last hour, a point a minute.
async fn activity(State(state): State<AppState>, signed: SignedIn, Path(tenant): Path<String>) -> Result<Response, ConsoleError> {
    signed.reads(&state, &tenant)?;
    let now = crate::storage::now_ms();
    let minutes = state.db.minutes(&tenant, now - 3_600_000, now).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(minutes)).into_response())
}

async fn resume(
    State(state): State<AppState>,
    signed: SignedIn,
    Path((tenant, plugin)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    signed.check(&form.csrf)?;
    let released = crate::admin::resume_plugin(&state, &signed.0.caller, &tenant, &plugin).await?;
    let seg = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    let to = format!("/console/tenants/{}?resumed={}&released={released}", seg(&tenant), seg(&plugin));
    Ok(Redirect::to(&to).into_response())
}

async fn deliveries(
    State(state): State<AppState>,
    signed: SignedIn,
    Path(tenant): Path<String>,
    Query(params): Query<SearchParams>,
) -> Result<impl IntoResponse, ConsoleError> {
    signed.reads(&state, &tenant)?;
    let search = params.to_search()?;
    let found = state.db.search(&tenant, search.clone()).await.map_err(AdminError::from)?;
    let plugins: Vec<String> = state.registry.plugins(&tenant).iter().map(|p| p.name.clone()).collect();
    let live = search.before.is_none() && search.until_ms.is_none();
    Ok(page(pages::deliveries(&signed.0, &tenant, &params, &plugins, &found, live)))
}

#[derive(Debug, Default, serde::Deserialize)]
struct Replayed {
    replayed_from: Option<i64>,
}

async fn delivery(
    State(state): State<AppState>,
    signed: SignedIn,
    Path((tenant, id)): Path<(String, String)>,
    Query(from): Query<Replayed>,
) -> Result<impl IntoResponse, ConsoleError> {
    signed.reads(&state, &tenant)?;
    let not_found = || AdminError::NotFound(format!("delivery `{id}` of tenant `{tenant}`"));
    let n: i64 = id.parse().map_err(|_| not_found())?;
    let detail = state.db.delivery_detail(&tenant, n).await?.ok_or_else(not_found)?;
    Ok(page(pages::delivery(&signed.0, &tenant, &detail, from.replayed_from)))
}

/// Replays the delivery's event; shows the new delivery to the same plugin
/// (or the first, if that plugin no longer takes the event).
async fn replay(
    State(state): State<AppState>,
    signed: SignedIn,
    Path((tenant, id)): Path<(String, i64)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    signed.check(&form.csrf)?;
    signed.0.caller.may(&tenant, Scope::Operate)?;
    signed.reads(&state, &tenant)?;
    let not_found = || AdminError::NotFound(format!("delivery `{id}` of tenant `{tenant}`"));
    let detail = state.db.delivery_detail(&tenant, id).await?.ok_or_else(not_found)?;
    let accepted = crate::admin::replay_event(&state, &signed.0.caller, &tenant, &detail.delivery.event_id).await?;
    let new = accepted
        .deliveries
        .iter()
        .find(|d| d.plugin == detail.delivery.plugin)
        .or(accepted.deliveries.first())
        .ok_or_else(|| AdminError::Conflict(format!("no plugin of `{tenant}` takes this event now")))?;
    let seg = percent_encoding::utf8_percent_encode(&tenant, percent_encoding::NON_ALPHANUMERIC).to_string();
    Ok(Redirect::to(&format!("/console/tenants/{seg}/deliveries/{}?replayed_from={id}", new.id)).into_response())
}
