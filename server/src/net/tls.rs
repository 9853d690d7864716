//! Mutual TLS between members, with no certificate authority: each node presents a
//! certificate self-signed with its own ed25519 member key, and a peer is accepted
//! exactly when the key in its certificate is a current member. Names, issuers and
//! validity dates mean nothing here; the key is the identity.
//!
//! TLS 1.3 only, ed25519 only: every member key is ed25519, so nothing else could
//! ever verify.

use std::sync::{Arc, PoisonError, RwLock};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};

use crate::chain::{Member, Members};
use crate::consensus::MemberIndex;

/// The name a dialer asks for; certificates carry it, nobody relies on it.
pub const SERVER_NAME: &str = "ledger-member";

/// RFC 8410 PKCS#8 v1 prefix of an ed25519 private key; the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// RFC 8410 SubjectPublicKeyInfo prefix of an ed25519 public key; the 32-byte key follows.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why the TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate could not be made from the key.
    #[error("cannot make the node certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The keys a node talks to, shared by every connection so that a membership change
/// reaches new handshakes at once: the current members, in rotation order, then the
/// observers (learners, and the members the last change removed, which fetch the
/// blocks that tell them so), numbered after them.
#[derive(Clone, Debug)]
pub struct Roster(Arc<RwLock<Vec<VerifyingKey>>>);

impl Roster {
    /// The roster of `members`, in rotation order, then `observers`.
    pub fn new(members: &Members, observers: &[Member]) -> Roster {
        Roster(Arc::new(RwLock::new(Roster::keys(members, observers))))
    }

    fn keys(members: &Members, observers: &[Member]) -> Vec<VerifyingKey> {
        let all = members.as_slice().iter().chain(observers);
        all.map(|m| m.public_key).collect()
    }

    /// Replaces the members and observers: new handshakes see them at once.
    pub fn set(&self, members: &Members, observers: &[Member]) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Roster::keys(members, observers);
    }

    /// How many keys are on the roster, members and observers.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether the roster is empty (never, for a valid chain).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of `key` (a member's, or an observer's after them), if it is on the
    /// roster.
    pub fn index_of(&self, key: &[u8; 32]) -> Option<MemberIndex> {
        let keys = self.0.read().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .position(|k| k.as_bytes() == key)
            .and_then(|i| MemberIndex::try_from(i).ok())
    }
}

/// The ed25519 key inside an X.509 certificate, if that is what it holds.
pub fn certificate_key(certificate: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = ParsedCertificate::try_from(certificate).ok()?;
    let spki = parsed.subject_public_key_info();
    let key = spki.strip_prefix(SPKI_ED25519_PREFIX.as_slice())?;
    key.try_into().ok()
}

/// A certificate self-signed with `key`, and the key in the form rustls takes.
pub fn self_signed(
    key: &SigningKey,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let mut pkcs8 = PKCS8_ED25519_PREFIX.to_vec();
    pkcs8.extend_from_slice(key.as_bytes());
    let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8);
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    let certificate = params.self_signed(&key_pair)?;
    Ok((certificate.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
}

/// Accepts a peer certificate exactly when its ed25519 key is a current member.
#[derive(Debug)]
struct MemberVerifier {
    roster: Roster,
    provider: Arc<CryptoProvider>,
}

impl MemberVerifier {
    fn check(&self, certificate: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let key = certificate_key(certificate).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        match self.roster.index_of(&key) {
            Some(_) => Ok(()),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }
}

/// The handshake-signature half of both verifier traits, which is the same: TLS 1.3
/// with ed25519 only.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _certificate: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("TLS 1.2 is not offered".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            certificate: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                certificate,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

impl ServerCertVerifier for MemberVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ClientCertVerifier for MemberVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Both ends of member-to-member TLS for the node holding `key`.
pub fn configs(
    key: &SigningKey,
    roster: &Roster,
) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(MemberVerifier {
        roster: roster.clone(),
        provider: provider.clone(),
    });
    let (certificate, private) = self_signed(key)?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(vec![certificate.clone()], private.clone_key())?;
    // A consensus link names no protocol; a request connection names this one.
    server.alpn_protocols = vec![super::requests::ALPN.to_vec()];
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![certificate], private)?;
    Ok((Arc::new(server), Arc::new(client)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_carries_the_member_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let (certificate, _) = self_signed(&key).expect("certificate");
        assert_eq!(
            certificate_key(&certificate),
            Some(key.verifying_key().to_bytes())
        );
        assert_eq!(certificate_key(&CertificateDer::from(vec![0x30, 0])), None);
    }
}
