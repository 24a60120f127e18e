//! TLS with rustls (`--tls-cert`, `--tls-key`: PEM certificate chain and private key). The
//! certificate is read again on SIGHUP (a renewed certificate without a restart); one that
//! fails to load leaves the one in use in place, and says why.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The server certificate, replaceable while connections are served.
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Reloads that took, and that failed (the certificate in use stayed).
    pub reloaded: AtomicU64,
    pub reload_failures: AtomicU64,
}

fn load(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("TLS certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("TLS certificate {}: {e}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "TLS certificate {}: no certificate in it",
        cert.display()
    );
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("TLS key {}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| anyhow::anyhow!("TLS key {}: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        anyhow::anyhow!(
            "TLS key {} does not match {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(ck)
}

impl Certificate {
    pub fn open(cert: &Path, key: &Path) -> anyhow::Result<Arc<Certificate>> {
        let ck = load(cert, key)?;
        Ok(Arc::new(Certificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(ck)),
            reloaded: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }))
    }

    /// Read the files again (SIGHUP).
    pub fn reload(&self) {
        match load(&self.cert, &self.key) {
            Ok(ck) => {
                *self.current.write().expect("certificate lock") = Arc::new(ck);
                self.reloaded.fetch_add(1, Relaxed);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "TLS certificate not reloaded; the one in use stays");
            }
        }
    }

    /// A rustls server configuration serving this certificate (HTTP/2 and HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}
