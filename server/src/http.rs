//! The HTTP client of every tool that calls a node's client API (ledgerctl, the load
//! generator, followers, joins and backups): `ledger-client`'s credentials, and those
//! a node's `[upstream]` names.

pub use ledger_client::{Credentials, CredentialsError};

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
