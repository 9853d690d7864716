//! What a client shows a node's API: https against a chosen CA (or the web's public
//! roots), an optional client certificate, and a bearer token on every request.

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
    /// The scheme to reach a node's API with: https when a CA is given.
    pub fn scheme(&self) -> &'static str {
        match self.cacert.is_some() {
            true => "https",
            false => "http",
        }
    }

    /// The base URL of the API at `address` (`host:port`, or a URL kept as it is);
    /// refused when it would carry the token in clear to another machine.
    pub fn base_url(&self, address: &str) -> Result<String, CredentialsError> {
        let address = address.trim_end_matches('/');
        let url = match address.contains("://") {
            true => address.to_owned(),
            false => format!("{}://{address}", self.scheme()),
        };
        if let Some(rest) = url.strip_prefix("http://") {
            if self.token.is_some() && !is_loopback(rest) {
                return Err(CredentialsError {
                    path: url.clone().into(),
                    reason: "a token is never sent in clear to another machine: reach the \
                             node over https (an https:// URL, or a CA file)"
                        .into(),
                });
            }
        }
        Ok(url)
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

/// Whether the authority at the start of `rest` (`host[:port][/...]`) is this machine.
fn is_loopback(rest: &str) -> bool {
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        // `[::1]:7100`, `127.0.0.1:7100`, `localhost:7100`; a bare `::1` has colons.
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_in_clear_only_to_this_machine() {
        let with_token = Credentials {
            token: Some("ledger_x".into()),
            ..Credentials::default()
        };
        for local in [
            "127.0.0.1:7100",
            "http://localhost:7100/",
            "http://[::1]:7100",
        ] {
            assert!(with_token.base_url(local).is_ok(), "{local}");
        }
        for remote in [
            "10.0.0.1:7100",
            "http://ledger.example.com",
            "http://[2001:db8::1]:80",
        ] {
            assert!(with_token.base_url(remote).is_err(), "{remote}");
        }
        assert_eq!(
            with_token
                .base_url("https://ledger.example.com:7100/")
                .unwrap(),
            "https://ledger.example.com:7100"
        );
        let tls = Credentials {
            cacert: Some("ca.pem".into()),
            ..with_token
        };
        assert_eq!(
            tls.base_url("10.0.0.1:7100").unwrap(),
            "https://10.0.0.1:7100"
        );
        assert_eq!(
            Credentials::default().base_url("10.0.0.1:7100").unwrap(),
            "http://10.0.0.1:7100"
        );
    }
}
