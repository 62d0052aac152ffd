//! Who is calling the admin API and the console: the operator (the config's
//! `admin_token`, the superuser) or a tenant, by one of its API tokens and
//! that token's scopes. Tokens are `sbt_<id>_<secret>`: the id finds the
//! stored token, the secret is checked against its SHA-256 in constant time.
//! Every failure counts toward the admin lockout.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AdminError;
use crate::engine::state::AppState;

/// What a tenant's token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// See plugins, deliveries, the tail, KV, the audit log.
    Read,
    /// Deploy plugin versions.
    Deploy,
    /// Resume plugins and replay events.
    Operate,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Deploy, Scope::Operate];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Operate => "operate",
        }
    }

    /// The scope named `name`.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator: every tenant, every route.
    Operator,
    /// A tenant's token: that tenant only, within its scopes.
    Tenant {
        /// The tenant.
        tenant: String,
        /// The token's public id.
        token: String,
        /// What it may do.
        scopes: Vec<Scope>,
    },
}

impl Caller {
    /// How the audit log names it: `operator` or `token:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Operator => "operator".into(),
            Caller::Tenant { token, .. } => format!("token:{token}"),
        }
    }

    /// The one tenant it may see, if it is not the operator.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Operator => None,
            Caller::Tenant { tenant, .. } => Some(tenant),
        }
    }

    /// Refuses unless it may act on `tenant` within `scope`. Another
    /// tenant's is "not found", exactly as a tenant that does not exist.
    pub fn may(&self, tenant: &str, scope: Scope) -> Result<(), AdminError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Tenant { tenant: own, .. } if own != tenant => Err(AdminError::NotFound(format!("tenant `{tenant}`"))),
            Caller::Tenant { scopes, .. } if scopes.contains(&scope) => Ok(()),
            Caller::Tenant { .. } => Err(AdminError::Forbidden(format!("this token lacks the `{}` scope", scope.as_str()))),
        }
    }

    /// Refuses unless it is the operator.
    pub fn operator(&self, what: &str) -> Result<(), AdminError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Tenant { .. } => Err(AdminError::Forbidden(format!("only the operator's admin token may {what}"))),
        }
    }
}

/// The prefix of every tenant token.
pub const TOKEN_PREFIX: &str = "sbt_";

/// A new token: its public id, and the whole token text (shown once).
pub fn new_token() -> (String, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).expect("the OS random number generator");
    getrandom::fill(&mut secret).expect("the OS random number generator");
    let id = hex::encode(id);
    let text = format!("{TOKEN_PREFIX}{id}_{}", hex::encode(secret));
    (id, text)
}

/// What is stored of a token's secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `(id, secret)` of a token's text, if it has a token's shape.
fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    (id.len() == 16 && !secret.is_empty()).then_some((id, secret))
}

/// Who `given` (a bearer token, or the console's sign-in) is. Past
/// `MAX_ADMIN_FAILURES` failures a minute, every request is refused (429)
/// without its token being looked at until the minute is over; failures
/// are logged at warn (at most once a second).
pub async fn identify(state: &AppState, given: Option<&str>) -> Result<Caller, AdminError> {
    let Some(admin) = &state.config.admin_token else {
        return Err(AdminError::Unauthorized("the admin API is off: set admin_token in the config"));
    };
    if let Some(wait) = state.guards.admin_locked_for() {
        return Err(AdminError::Locked(wait.as_secs().max(1)));
    }
    let refusal = match given {
        Some(g) if bool::from(g.as_bytes().ct_eq(admin.expose().as_bytes())) => return Ok(Caller::Operator),
        Some(g) => match split(g) {
            Some((id, secret)) => match state.db.token(id).await? {
                Some(t)
                    if t.revoked_at.is_none()
                        && state.tenants.contains_key(&t.tenant)
                        && bool::from(secret_hash(secret).as_bytes().ct_eq(t.secret_hash.as_bytes())) =>
                {
                    let scopes = t.scopes.split_whitespace().filter_map(Scope::parse).collect();
                    return Ok(Caller::Tenant {
                        tenant: t.tenant,
                        token: t.id,
                        scopes,
                    });
                }
                _ => AdminError::Unauthorized("wrong bearer token"),
            },
            None => AdminError::Unauthorized("wrong bearer token"),
        },
        None => AdminError::Unauthorized("missing bearer token"),
    };
    state.guards.admin_failed();
    if let Some(suppressed) = state.guards.admin_failure_log.check() {
        tracing::warn!(reason = %refusal, suppressed, "admin authentication failed");
    }
    Err(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_own_tenant_within_its_scopes() {
        let t = Caller::Tenant {
            tenant: "acme".into(),
            token: "0123456789abcdef".into(),
            scopes: vec![Scope::Read],
        };
        assert!(t.may("acme", Scope::Read).is_ok());
        assert!(matches!(t.may("acme", Scope::Operate), Err(AdminError::Forbidden(_))));
        assert!(matches!(t.may("globex", Scope::Read), Err(AdminError::NotFound(_))));
        assert!(matches!(t.operator("create tokens"), Err(AdminError::Forbidden(_))));
        assert!(Caller::Operator.may("globex", Scope::Operate).is_ok());
        assert_eq!(t.actor(), "token:0123456789abcdef");
    }

    #[test]
    fn tokens_have_an_id_and_a_secret_and_only_the_hash_is_kept() {
        let (id, text) = new_token();
        let (i, secret) = split(&text).unwrap();
        assert_eq!((i, secret.len()), (id.as_str(), 64));
        assert_ne!(secret_hash(secret), secret);
        assert_eq!(secret_hash(secret).len(), 64);
        assert_eq!(split("sbt_short_x"), None);
        assert_eq!(split("not-a-token"), None);
    }
}
