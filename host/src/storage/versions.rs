//! Each plugin's kept versions: a row per (tenant, plugin, version id) with
//! its manifest text, where it came from and when it last served, and the
//! component itself as a file under `<data_dir>/versions/`, named by its
//! SHA-256 so a version uploaded twice, or kept by two tenants, is one file.
//! The newest `keep` versions of a plugin (by when they last served) are
//! kept; an older one's row goes, and its file once no row names it.

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::schema::{NOW, now_ms};
use super::{Db, DbError};

/// A version to keep.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// The tenant.
    pub tenant: String,
    /// The plugin name.
    pub plugin: String,
    /// Its version id (see `engine::plugins::version_id`).
    pub id: String,
    /// SHA-256 of the component, hex.
    pub hash: String,
    /// The manifest text it serves with, if any.
    pub manifest: Option<String>,
    /// `folder`, `api` or `rollback`.
    pub source: String,
    /// Who: `operator`, `token:<id>` or `folder`.
    pub actor: String,
}

/// A kept version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeptVersion {
    /// Its version id.
    pub id: String,
    /// SHA-256 of the component, hex.
    pub hash: String,
    /// The manifest text, if any.
    pub manifest: Option<String>,
    /// How it arrived the last time it was deployed.
    pub source: String,
    /// Who deployed it the last time.
    pub actor: String,
    /// When it was first deployed.
    pub created_at: String,
    /// When it last started serving (ms since the epoch).
    pub served_ms: i64,
    /// The same, as RFC 3339.
    pub served_at: String,
}

/// Why a kept version's code could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the kept code of version {id} cannot be read ({path}): {source}")]
pub struct BlobError {
    id: String,
    path: PathBuf,
    source: std::io::Error,
}

const COLUMNS: &str = "id, hash, manifest, source, actor, created_at, served_ms";

fn kept(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeptVersion> {
    Ok(KeptVersion {
        id: r.get(0)?,
        hash: r.get(1)?,
        manifest: r.get(2)?,
        source: r.get(3)?,
        actor: r.get(4)?,
        created_at: r.get(5)?,
        served_ms: r.get(6)?,
        served_at: crate::domain::clock::rfc3339_ms(r.get(6)?).unwrap_or_default(),
    })
}

impl Db {
    /// Where kept components live.
    fn blob_dir(&self) -> PathBuf {
        self.path().parent().unwrap_or(Path::new(".")).join("versions")
    }

    fn blob_path(&self, hash: &str) -> PathBuf {
        self.blob_dir().join(format!("{hash}.wasm"))
    }

    /// Keeps `bytes` (whose SHA-256 is `hash`) as a file, unless it already
    /// is one: written beside and renamed into place, so a kept file is whole.
    pub fn keep_code(&self, hash: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.blob_path(hash);
        if path.is_file() {
            return Ok(());
        }
        std::fs::create_dir_all(self.blob_dir())?;
        let tmp = self.blob_dir().join(format!(".{hash}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }

    /// The kept code of `version`, read on the blocking pool.
    pub async fn kept_code(&self, version: &KeptVersion) -> Result<Vec<u8>, BlobError> {
        let path = self.blob_path(&version.hash);
        let blocking = self.blocking.clone().unwrap_or_else(tokio::runtime::Handle::current);
        let file = path.clone();
        let read = blocking
            .spawn_blocking(move || std::fs::read(file))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        read.map_err(|source| BlobError {
            id: version.id.clone(),
            path,
            source,
        })
    }

    /// Records that `version` serves from now (its code already kept with
    /// [`Db::keep_code`]), then forgets the plugin's versions beyond the
    /// newest `keep`, deleting code no kept version names. Runs behind the
    /// writer's queue: a later write's completion implies this one's.
    pub fn keep_version(&self, version: NewVersion, keep: usize) {
        let blobs = self.blob_dir();
        self.write_detached("keep a plugin version", move |conn| {
            let v = &version;
            conn.execute(
                &format!(
                    "INSERT INTO versions (tenant, plugin, id, hash, manifest, source, actor, created_at, served_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {NOW}, ?8)
                     ON CONFLICT (tenant, plugin, id) DO UPDATE SET
                       served_ms = excluded.served_ms, source = excluded.source, actor = excluded.actor"
                ),
                params![v.tenant, v.plugin, v.id, v.hash, v.manifest, v.source, v.actor, now_ms()],
            )?;
            let dropped: Vec<String> = conn
                .prepare(
                    "DELETE FROM versions WHERE tenant = ?1 AND plugin = ?2 AND id NOT IN
                       (SELECT id FROM versions WHERE tenant = ?1 AND plugin = ?2 ORDER BY served_ms DESC LIMIT ?3)
                     RETURNING hash",
                )?
                .query_map(params![v.tenant, v.plugin, keep as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for hash in dropped {
                let named: Option<i64> = conn
                    .query_row("SELECT 1 FROM versions WHERE hash = ?1 LIMIT 1", [&hash], |r| r.get(0))
                    .optional()?;
                if named.is_none() {
                    let _ = std::fs::remove_file(blobs.join(format!("{hash}.wasm")));
                }
            }
            Ok(())
        });
    }

    /// A plugin's kept versions, the one that served last first.
    pub async fn versions(&self, tenant: &str, plugin: &str) -> Result<Vec<KeptVersion>, DbError> {
        let (t, p) = (tenant.to_string(), plugin.to_string());
        self.browse(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM versions WHERE tenant = ?1 AND plugin = ?2 ORDER BY served_ms DESC, id"
            ))?;
            let rows = stmt.query_map(params![t, p], kept)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One kept version of a plugin.
    pub async fn version(&self, tenant: &str, plugin: &str, id: &str) -> Result<Option<KeptVersion>, DbError> {
        let (t, p, id) = (tenant.to_string(), plugin.to_string(), id.to_string());
        self.browse(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM versions WHERE tenant = ?1 AND plugin = ?2 AND id = ?3"),
                    params![t, p, id],
                    kept,
                )
                .optional()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(id: &str, hash: &str) -> NewVersion {
        NewVersion {
            tenant: "acme".into(),
            plugin: "crm".into(),
            id: id.into(),
            hash: hash.into(),
            manifest: None,
            source: "api".into(),
            actor: "operator".into(),
        }
    }

    #[tokio::test]
    async fn keeps_the_newest_and_deletes_code_no_version_names() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Default::default()).unwrap();
        for i in 0..5 {
            let hash = format!("h{i}");
            db.keep_code(&hash, hash.as_bytes()).unwrap();
            db.keep_version(version(&format!("v{i}"), &hash), 3);
            // Served one after another, a millisecond apart at least.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // A write behind the queue: the kept versions are committed.
        db.audit("acme", "test", "sync", "", "ok").await.unwrap();
        let kept = db.versions("acme", "crm").await.unwrap();
        assert_eq!(kept.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), ["v4", "v3", "v2"]);
        assert!(!dir.path().join("versions/h0.wasm").exists());
        assert!(!dir.path().join("versions/h1.wasm").exists());
        assert_eq!(db.kept_code(&kept[2]).await.unwrap(), b"h2");
        // Serving an old version again makes it the newest.
        db.keep_version(version("v2", "h2"), 3);
        db.audit("acme", "test", "sync", "", "ok").await.unwrap();
        assert_eq!(db.versions("acme", "crm").await.unwrap()[0].id, "v2");
        assert!(db.version("acme", "crm", "v9").await.unwrap().is_none());
    }
}
