//! The HTTP client of every tool that calls a node's client API (ledgerctl, the load
//! generator, followers, joins and backups): https against a chosen CA (or the web's
//! public roots), an optional client certificate, and a bearer token on every request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// What a client shows a node's API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// PEM CA certificates that issued the API's certificate; the web's public roots
    /// when absent.
    pub cacert: Option<PathBuf>,
    /// PEM client certificate and its key, for an API that verifies clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// A token secret, sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct CredentialsError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl Credentials {
    /// The credentials of a node's `[upstream]`.
    pub fn upstream(upstream: &crate::config::Upstream) -> Result<Credentials, CredentialsError> {
        let token = upstream
            .token_file
            .as_deref()
            .map(crate::config::read_secret)
            .transpose()
            .map_err(|error| CredentialsError {
                path: upstream.token_file.clone().unwrap_or_default(),
                reason: error.to_string(),
            })?;
        Ok(Credentials {
            cacert: upstream.cacert.clone(),
            client_cert: upstream.cert.clone().zip(upstream.key.clone()),
            token,
        })
    }

    /// The scheme to reach a node's API with: https when a CA is given.
    pub fn scheme(&self) -> &'static str {
        match self.cacert.is_some() {
            true => "https",
            false => "http",
        }
    }

    /// The base URL of the API at `address` (`host:port`, or a URL kept as it is).
    pub fn base_url(&self, address: &str) -> String {
        let address = address.trim_end_matches('/');
        match address.contains("://") {
            true => address.to_owned(),
            false => format!("{}://{address}", self.scheme()),
        }
    }

    /// A client that reads error statuses as answers, each request bounded by
    /// `timeout`.
    pub fn agent(&self, timeout: Duration) -> Result<ureq::Agent, CredentialsError> {
        let mut tls = TlsConfig::builder();
        if let Some(path) = &self.cacert {
            tls = tls.root_certs(RootCerts::from(certificates(path)?));
        }
        if let Some((cert, key)) = &self.client_cert {
            let chain = certificates(cert)?;
            let key = PrivateKey::from_pem(&read(key)?).map_err(|error| CredentialsError {
                path: key.clone(),
                reason: format!("not a PEM private key: {error}"),
            })?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(tls.build());
        if let Some(token) = &self.token {
            let value =
                ureq::http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    CredentialsError {
                        path: "<token>".into(),
                        reason: "a token is printable ASCII".into(),
                    }
                })?;
            config = config.middleware(
                move |mut request: ureq::http::Request<ureq::SendBody>,
                      next: ureq::middleware::MiddlewareNext| {
                    let headers = request.headers_mut();
                    headers.insert(ureq::http::header::AUTHORIZATION, value.clone());
                    next.handle(request)
                },
            );
        }
        Ok(config.build().into())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|error| CredentialsError {
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

fn certificates(path: &Path) -> Result<Vec<Certificate<'static>>, CredentialsError> {
    let pem = read(path)?;
    let certificates: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(certificate)) => Some(certificate),
            _ => None,
        })
        .collect();
    if certificates.is_empty() {
        return Err(CredentialsError {
            path: path.to_owned(),
            reason: "no PEM certificate in the file".into(),
        });
    }
    Ok(certificates)
}
