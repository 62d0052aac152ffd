//! Tenants' API tokens (stored as the SHA-256 of their secret, never the
//! secret itself; found by their public id) and the audit log: who did what
//! to a tenant, when, and how it ended.

use rusqlite::{OptionalExtension, params};

use super::schema::NOW;
use super::{Db, DbError};

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredToken {
    /// Its public id (the part of the token before the secret).
    pub id: String,
    /// The one tenant it opens.
    pub tenant: String,
    /// What it may do, space-separated (`read deploy operate`).
    pub scopes: String,
    /// What the operator called it.
    pub label: String,
    /// When it was made.
    pub created_at: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
    /// SHA-256 of the secret, hex.
    #[serde(skip)]
    pub secret_hash: String,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Its id (newest is largest).
    pub id: i64,
    /// When.
    pub at: String,
    /// Who: `operator`, or `token:<id>`.
    pub actor: String,
    /// What: `resume`, `replay`, `token.create`, `token.revoke`, ….
    pub action: String,
    /// On what: a plugin, an event, a token id.
    pub target: String,
    /// How it ended: `ok`, or why not.
    pub result: String,
}

const TOKEN_COLUMNS: &str = "id, tenant, scopes, label, created_at, revoked_at, secret_hash";

fn token(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredToken> {
    Ok(StoredToken {
        id: r.get(0)?,
        tenant: r.get(1)?,
        scopes: r.get(2)?,
        label: r.get(3)?,
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
        secret_hash: r.get(6)?,
    })
}

impl Db {
    /// Stores a new token (its secret only as `secret_hash`).
    pub async fn create_token(&self, id: &str, tenant: &str, scopes: &str, label: &str, secret_hash: &str) -> Result<StoredToken, DbError> {
        let (id, tenant, scopes, label, hash) = (
            id.to_string(),
            tenant.to_string(),
            scopes.to_string(),
            label.to_string(),
            secret_hash.to_string(),
        );
        self.write(move |conn| {
            Ok(conn.query_row(
                &format!(
                    "INSERT INTO tokens (id, tenant, scopes, label, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, {NOW})
                     RETURNING {TOKEN_COLUMNS}"
                ),
                params![id, tenant, scopes, label, hash],
                token,
            )?)
        })
        .await
    }

    /// The token with this public id, revoked or not.
    pub async fn token(&self, id: &str) -> Result<Option<StoredToken>, DbError> {
        let id = id.to_string();
        self.browse(move |conn| {
            Ok(conn
                .query_row(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"), [id], token)
                .optional()?)
        })
        .await
    }

    /// The tenant's tokens, newest first.
    pub async fn tokens(&self, tenant: &str) -> Result<Vec<StoredToken>, DbError> {
        let t = tenant.to_string();
        self.browse(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE tenant = ?1 ORDER BY created_at DESC, id"
            ))?;
            let rows = stmt.query_map([t], token)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Revokes one of the tenant's tokens; whether it was live until now.
    pub async fn revoke_token(&self, tenant: &str, id: &str) -> Result<bool, DbError> {
        let (t, id) = (tenant.to_string(), id.to_string());
        self.write(move |conn| {
            Ok(conn.execute(
                &format!("UPDATE tokens SET revoked_at = {NOW} WHERE id = ?1 AND tenant = ?2 AND revoked_at IS NULL"),
                params![id, t],
            )? == 1)
        })
        .await
    }

    /// Appends to the tenant's audit log, durably.
    pub async fn audit(&self, tenant: &str, actor: &str, action: &str, target: &str, result: &str) -> Result<(), DbError> {
        let v = [tenant, actor, action, target, result].map(str::to_string);
        self.write(move |conn| {
            conn.execute(
                &format!("INSERT INTO audit (tenant, actor, action, target, result, at) VALUES (?1, ?2, ?3, ?4, ?5, {NOW})"),
                params![v[0], v[1], v[2], v[3], v[4]],
            )?;
            Ok(())
        })
        .await
    }

    /// The tenant's audit log, newest first, before entry `before` if given.
    pub async fn audit_log(&self, tenant: &str, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, DbError> {
        let t = tenant.to_string();
        self.browse(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, at, actor, action, target, result FROM audit
                 WHERE tenant = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![t, before.unwrap_or(i64::MAX), limit], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    result: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
