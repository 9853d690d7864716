//! TLS on the client API: a certificate chain and key from PEM files (any issuer the
//! clients trust), optionally client certificates checked against a CA. The files are
//! read again on [`ApiTls::reload`] (SIGHUP, with the paths the config names then),
//! so a renewed certificate is served to new connections without stopping the node;
//! open connections keep theirs.
//!
//! TLS 1.3 only, as between members.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

/// The files of the API's TLS, from `[api]` in ledgerd.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own first.
    pub cert: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when given, clients must present a certificate one of
    /// them issued.
    pub client_ca: Option<PathBuf>,
}

/// Why the API's TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    /// A file is missing, unreadable, or not PEM of the kind it must hold.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate, key or CA (a key that does not match the
    /// certificate, say).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl ToString) -> ApiTlsError {
    ApiTlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The API's TLS: the configuration new connections get.
pub struct ApiTls {
    config: RwLock<Arc<ServerConfig>>,
}

impl ApiTls {
    /// Reads and checks `files`.
    pub fn load(files: &TlsFiles) -> Result<ApiTls, ApiTlsError> {
        let config = RwLock::new(server_config(files)?);
        Ok(ApiTls { config })
    }

    /// Reads `files` (the same or new paths) and puts them in force for new
    /// connections; on failure the configuration in force stays.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), ApiTlsError> {
        let config = server_config(files)?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The configuration for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ApiTlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| file_error(path, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(path, error))?;
    if certificates.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certificates)
}

fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, ApiTlsError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|error| {
        file_error(
            &files.key,
            format!("{error} (a PEM private key: PKCS#8, PKCS#1 or SEC1)"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = |error: rustls::Error| ApiTlsError::Config(error.to_string());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|error| file_error(path, error))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| file_error(path, error))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
