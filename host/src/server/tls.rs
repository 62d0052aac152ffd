//! HTTPS for the webhook listener without a proxy: rustls (ring), HTTP/1.1
//! over ALPN, and a certificate that is reloaded when its PEM files change
//! (a certbot renewal) without a restart. A pair that does not load (half
//! written, key and certificate not matching) keeps the current one serving
//! and is tried again at the next change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// How often the PEM files are looked at for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Why a certificate and key could not be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{key} `{}`: {reason}", path.display())]
    File {
        /// The config key naming the file (`tls_cert`, `tls_key`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls refused them.
    #[error("tls_key `{}` does not match tls_cert `{}`: {reason}", key.display(), cert.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a certificate chain and its key from PEM files.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let file_error = |key: &'static str, path: &Path, reason: String| TlsError::File {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error("tls_cert", &files.cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("tls_cert", &files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error("tls_cert", &files.cert, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error("tls_key", &files.key, e.to_string()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    })
}

/// The certificate being served, swapped when its files change.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(crate::sync::read(&self.current).clone())
    }
}

/// What identifies a version of the files: modification time and length of
/// each (following symlinks, as certbot's `live/` has them).
fn stamp(files: &TlsFiles) -> Option<[(SystemTime, u64); 2]> {
    let one = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
    Some([one(&files.cert)?, one(&files.key)?])
}

/// An acceptor serving `files`, and the task that reloads them on change
/// (it ends when the acceptor's last user does).
pub fn acceptor(files: TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let first = stamp(&files);
    let certificates = Arc::new(Certificates {
        current: RwLock::new(Arc::new(load(&files)?)),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let watched = Arc::downgrade(&certificates);
    tokio::spawn(async move {
        let mut seen = first;
        loop {
            tokio::time::sleep(RELOAD_CHECK).await;
            let Some(certificates) = watched.upgrade() else { return };
            let now = stamp(&files);
            if now == seen {
                continue;
            }
            seen = now;
            match load(&files) {
                Ok(key) => {
                    *crate::sync::write(&certificates.current) = Arc::new(key);
                    tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                }
                // Keep serving the current pair; a half-written renewal
                // loads at its next change.
                Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded; the current one stays"),
            }
        }
    });
    Ok(TlsAcceptor::from(Arc::new(config)))
}
