//! The on-disk compiled-code cache: precompiled components keyed by content
//! hash and engine settings, checksummed so a corrupt entry is detected and
//! recompiled rather than executed, and pruned to a size bound.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Entries beyond this total size are pruned, least recently used first.
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;
const MAGIC: &[u8; 8] = b"SBCWASM1";

/// Why a cache entry was not usable.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing failed.
    #[error("cache I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The entry's checksum or header does not match.
    #[error("entry {0} is corrupt")]
    Corrupt(PathBuf),
    /// wasmtime refused the precompiled bytes.
    #[error("entry {0} does not load: {1}")]
    Incompatible(PathBuf, String),
}

/// A folder of precompiled components for one engine configuration.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    engine_key: String,
    max_bytes: u64,
}

impl DiskCache {
    /// Opens (creating) the cache folder for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(dir)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", h.finish()),
            max_bytes: DEFAULT_MAX_BYTES,
        })
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    /// The cached component for `hash`, if there is a sound entry. A corrupt
    /// entry is deleted and reported as an error.
    pub fn get(&self, engine: &Engine, hash: &str) -> Result<Option<Component>, CacheError> {
        let path = self.path(hash);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let result = Self::decode(engine, &path, &data);
        match &result {
            Ok(_) => {
                // Refresh the entry's age for least-recently-used pruning.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            }
            Err(_) => {
                let _ = std::fs::remove_file(&path);
            }
        }
        result.map(Some)
    }

    #[allow(unsafe_code)]
    fn decode(engine: &Engine, path: &Path, data: &[u8]) -> Result<Component, CacheError> {
        if data.len() < MAGIC.len() + 32 || &data[..MAGIC.len()] != MAGIC {
            return Err(CacheError::Corrupt(path.to_path_buf()));
        }
        let (sum, payload) = data[MAGIC.len()..].split_at(32);
        if Sha256::digest(payload).as_slice() != sum {
            return Err(CacheError::Corrupt(path.to_path_buf()));
        }
        // SAFETY: `deserialize` trusts its input to be wasmtime's own output.
        // These bytes are exactly what `put` wrote from `Component::serialize`
        // (the SHA-256 above proves they are unchanged), and the file name
        // carries this engine's compatibility hash; wasmtime additionally
        // checks its version and configuration header.
        unsafe { Component::deserialize(engine, payload) }.map_err(|e| CacheError::Incompatible(path.to_path_buf(), e.to_string()))
    }

    /// Stores a compiled component (write to a temp file, then rename) and
    /// prunes the folder to its size bound.
    pub fn put(&self, hash: &str, component: &Component) -> Result<(), CacheError> {
        let payload = component
            .serialize()
            .map_err(|e| CacheError::Incompatible(self.path(hash), e.to_string()))?;
        let path = self.path(hash);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&Sha256::digest(&payload))?;
            f.write_all(&payload)?;
        }
        std::fs::rename(&tmp, &path)?;
        self.prune()?;
        Ok(())
    }

    fn prune(&self) -> std::io::Result<()> {
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(&self.dir)?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}
