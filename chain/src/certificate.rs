//! Commit certificates: a quorum of member signatures proving a block was committed.
//!
//! The signed message is the PBFT COMMIT for (view, height, block hash); the consensus
//! replica signs exactly [`commit_digest`], so its commits aggregate into a certificate
//! any client can check offline against the membership.

use std::collections::HashSet;

use ed25519_dalek::{Signature, VerifyingKey};

use super::codec::Reader;
use super::genesis::Members;
use super::{CertificateError, ChainError, Hash};

const CERTIFICATE_VERSION: u8 = 1;
const COMMIT_DOMAIN: &[u8] = b"ledger/v1/commit";

/// What a member signs to commit `block_hash` at `height` in `view`.
pub fn commit_digest(chain_hash: &Hash, view: u64, height: u64, block_hash: &Hash) -> Hash {
    Hash::digest_parts(&[
        COMMIT_DOMAIN,
        chain_hash.as_bytes(),
        &view.to_be_bytes(),
        &height.to_be_bytes(),
        block_hash.as_bytes(),
    ])
}

/// One member's COMMIT signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitSignature {
    /// SHA-256 of the member's public key.
    pub node_id: Hash,
    /// ed25519 signature over [`commit_digest`].
    pub signature: [u8; 64],
}

/// Proof that a quorum of members committed one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitCertificate {
    /// The view the commits were sent in.
    pub view: u64,
    /// The block's height.
    pub height: u64,
    /// The block's hash.
    pub block_hash: Hash,
    /// At least a quorum of distinct members' signatures.
    pub signatures: Vec<CommitSignature>,
}

impl CommitCertificate {
    /// The canonical encoding (docs/FORMAT.md, "Commit certificate").
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 8 + 32 + 2 + self.signatures.len() * 96);
        out.push(CERTIFICATE_VERSION);
        out.extend_from_slice(&self.view.to_be_bytes());
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(self.block_hash.as_bytes());
        let count = u16::try_from(self.signatures.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for signature in self.signatures.iter().take(usize::from(count)) {
            out.extend_from_slice(signature.node_id.as_bytes());
            out.extend_from_slice(&signature.signature);
        }
        out
    }

    /// Decodes exactly one certificate.
    pub fn decode(bytes: &[u8]) -> Result<CommitCertificate, ChainError> {
        let mut reader = Reader::new(bytes, "commit certificate");
        let version = reader.u8()?;
        if version != CERTIFICATE_VERSION {
            return Err(ChainError::UnsupportedVersion {
                what: "commit certificate",
                version: version.into(),
            });
        }
        let view = reader.u64()?;
        let height = reader.u64()?;
        let block_hash = reader.hash()?;
        let count = usize::from(reader.u16()?);
        if count > reader.remaining() / 96 {
            return Err(ChainError::Malformed {
                what: "commit certificate",
                reason: "signature count exceeds the encoded size",
            });
        }
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            signatures.push(CommitSignature {
                node_id: reader.hash()?,
                signature: reader.array()?,
            });
        }
        reader.finish()?;
        Ok(CommitCertificate {
            view,
            height,
            block_hash,
            signatures,
        })
    }

    /// Checks that the certificate commits `block_hash` at `height` with valid
    /// signatures from at least a quorum of distinct members.
    pub fn verify(
        &self,
        chain_hash: &Hash,
        members: &Members,
        height: u64,
        block_hash: &Hash,
    ) -> Result<(), ChainError> {
        if self.height != height || self.block_hash != *block_hash {
            return Err(CertificateError::OtherBlock {
                certified: self.block_hash,
                certified_height: self.height,
                block: *block_hash,
                height,
            }
            .into());
        }
        let digest = commit_digest(chain_hash, self.view, self.height, &self.block_hash);
        let mut signers = HashSet::new();
        for entry in &self.signatures {
            let key: &VerifyingKey = members
                .key_of(&entry.node_id)
                .ok_or_else(|| ChainError::from(CertificateError::NotMember(entry.node_id)))?;
            if !signers.insert(entry.node_id) {
                return Err(CertificateError::SignedTwice(entry.node_id).into());
            }
            key.verify_strict(digest.as_bytes(), &Signature::from_bytes(&entry.signature))
                .map_err(|_| ChainError::from(CertificateError::BadSignature(entry.node_id)))?;
        }
        let quorum = members.quorum();
        if signers.len() < quorum {
            let (n, f) = (members.len(), members.max_faulty());
            // Before the quorum was fixed, ledgerd counted 2f + 1, which is too few
            // where n is not 3f + 1: say so, rather than call such a chain damaged.
            return Err(CertificateError::TooFew {
                found: signers.len(),
                quorum,
                members: n,
                legacy: signers.len() > 2 * f && n != 3 * f + 1,
            }
            .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{certify, entries, key, next_block, spec};
    use crate::CompactRange;

    /// A certificate a ledgerd before the quorum fix made at n = 5 (2f + 1 = 3
    /// signatures) is refused with the reason, not as an unexplained shortfall.
    #[test]
    fn too_few_signatures_name_the_quorum_and_an_old_rule() {
        let keys: Vec<_> = (1..=5).map(key).collect();
        let spec = spec(&keys, 4);
        let genesis = spec.genesis_block();
        let block = next_block(&genesis.header, &CompactRange::new(), entries(1, 1, 20), 4);
        let hash = block.hash();
        let verify = |signers: usize| {
            certify(&keys[..signers], &block)
                .verify(&spec.chain_hash(), &spec.members, 1, &hash)
                .map_err(|error| error.to_string())
        };
        assert_eq!(verify(4), Ok(()));
        let legacy = verify(3).unwrap_err();
        assert!(
            legacy.contains("a quorum of 5 members is 4") && legacy.contains("2f + 1 = 3"),
            "{legacy}"
        );
        let short = verify(2).unwrap_err();
        assert!(!short.contains("2f + 1"), "{short}");
    }
}
