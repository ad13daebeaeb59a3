//! TLS server configurations for L7 routes, one per (cert, key) pair,
//! cached and rebuilt when either file changes on disk (a renewal writes a
//! new file and renames it over the old one).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use crate::ProxyError;

/// Identity of a file's current contents without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Result<Stamp, ProxyError> {
    let m = std::fs::metadata(path).map_err(|e| ProxyError::Tls {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

#[derive(Debug)]
struct Cached {
    stamps: (Stamp, Stamp),
    config: Arc<ServerConfig>,
}

/// Server configurations by (cert path, key path).
#[derive(Debug, Default)]
pub(crate) struct CertCache {
    entries: Mutex<HashMap<(PathBuf, PathBuf), Cached>>,
}

impl CertCache {
    /// The configuration for this pair, reloaded if a file changed. When a
    /// reload fails but an older version loaded, the older one keeps serving
    /// (and the failure is logged) so a botched renewal does not take the
    /// route down.
    pub(crate) fn get(&self, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ProxyError> {
        let stamps = (stamp(cert)?, stamp(key)?);
        let k = (cert.to_path_buf(), key.to_path_buf());
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = entries.get(&k)
            && c.stamps == stamps
        {
            return Ok(c.config.clone());
        }
        match load(cert, key) {
            Ok(config) => {
                tracing::info!(cert = %cert.display(), "loaded proxy certificate");
                entries.insert(
                    k,
                    Cached {
                        stamps,
                        config: config.clone(),
                    },
                );
                Ok(config)
            }
            Err(e) => match entries.get(&k) {
                Some(old) => {
                    tracing::warn!(cert = %cert.display(), error = %e, "cannot reload certificate; serving the previous one");
                    Ok(old.config.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Loads the pair afresh, bypassing and refreshing the cache: used when
    /// routes are set, so a broken pair is refused up front.
    pub(crate) fn check(&self, cert: &Path, key: &Path) -> Result<(), ProxyError> {
        let stamps = (stamp(cert)?, stamp(key)?);
        let config = load(cert, key)?;
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((cert.to_path_buf(), key.to_path_buf()), Cached { stamps, config });
        Ok(())
    }
}

/// The crypto used by everything the proxy does with TLS.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A public-facing server configuration: TLS 1.2 and 1.3 (browsers), ALPN
/// h2 then http/1.1.
fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ProxyError> {
    let tls = |path: &Path, reason: String| ProxyError::Tls {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(cert).map_err(|e| tls(cert, e.to_string()))?;
    let chain = mcp_infra::tls::parse_certs(&pem).map_err(|r| tls(cert, r))?;
    let key_pem = mcp_infra::fsutil::read_private(key).map_err(|e| tls(key, e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| tls(key, e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            tls(
                cert,
                format!("certificate and key {} do not form a usable pair: {e}", key.display()),
            )
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The client configuration for backend_tls: TLS 1.2 and 1.3, verified
/// against `ca`, ALPN h2 then http/1.1.
pub(crate) fn backend_client(ca: &Path) -> Result<Arc<rustls::ClientConfig>, ProxyError> {
    let tls = |reason: String| ProxyError::Tls {
        path: ca.display().to_string(),
        reason,
    };
    let pem = std::fs::read(ca).map_err(|e| tls(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in mcp_infra::tls::parse_certs(&pem).map_err(tls)? {
        roots.add(c).map_err(|e| tls(e.to_string()))?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
