//! Receipts: what a client needs to check an entry offline, trusting only the genesis.

use super::merkle::{leaf_hash, verify_inclusion};
use super::{ChainError, ChainSpec, CommitCertificate, Hash, Header, Membership};

/// An entry's proof of commitment: its place in the log under a header, and the
/// header's commit certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The entry's id.
    pub entry_id: Hash,
    /// Its leaf index in the Merkle log.
    pub log_index: u64,
    /// The header of the block that committed it (its `log_size` is the tree size).
    pub header: Header,
    /// RFC 9162 inclusion proof of the entry under `header.log_root`.
    pub inclusion_proof: Vec<Hash>,
    /// The quorum's commit signatures over the header's hash.
    pub certificate: CommitCertificate,
}

impl Receipt {
    /// Checks everything a receipt claims against the chain `spec` alone: the header
    /// belongs to the chain and meets its own proof of work, the entry is in its log,
    /// and a quorum of the genesis members committed it. A receipt certified after a
    /// membership change needs [`Receipt::verify_in`].
    pub fn verify(&self, spec: &ChainSpec) -> Result<(), ChainError> {
        self.verify_under(spec, &Membership::genesis(spec))
    }

    /// [`Receipt::verify`] with the certificate checked against `membership`, in its
    /// epoch's signing domain.
    pub fn verify_under(
        &self,
        spec: &ChainSpec,
        membership: &Membership,
    ) -> Result<(), ChainError> {
        let chain_hash = spec.chain_hash();
        if self.header.chain_hash != chain_hash {
            return Err(ChainError::WrongChain {
                expected: chain_hash,
                found: self.header.chain_hash,
            });
        }
        let found_bits = self.header.hash().leading_zero_bits();
        if found_bits < self.header.difficulty {
            return Err(ChainError::InsufficientWork {
                difficulty: self.header.difficulty,
                found_bits,
            });
        }
        verify_inclusion(
            &leaf_hash(self.entry_id.as_bytes()),
            self.log_index,
            self.header.log_size,
            &self.inclusion_proof,
            &self.header.log_root,
        )?;
        membership.verify_certificate(
            &chain_hash,
            &self.certificate,
            self.header.height,
            &self.header.hash(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::key;

    fn receipt() -> (ChainSpec, Receipt) {
        let (spec, _, receipt) = crate::testing::receipt(3);
        (spec, receipt)
    }

    #[test]
    fn a_genuine_receipt_verifies() {
        let (spec, receipt) = receipt();
        receipt.verify(&spec).unwrap();
    }

    #[test]
    fn every_part_of_a_receipt_is_checked() {
        let (spec, good) = receipt();
        let mut wrong_entry = good.clone();
        wrong_entry.entry_id = Hash([1; 32]);
        assert!(matches!(
            wrong_entry.verify(&spec),
            Err(ChainError::Proof(_))
        ));
        let mut moved = good.clone();
        moved.log_index = 2;
        assert!(matches!(moved.verify(&spec), Err(ChainError::Proof(_))));
        let mut tampered = good.clone();
        tampered.header.timestamp_ms += 1;
        assert!(tampered.verify(&spec).is_err());
        let mut thin = good.clone();
        thin.certificate.signatures.truncate(2);
        assert!(matches!(
            thin.verify(&spec),
            Err(ChainError::Certificate(_))
        ));
        let other = crate::testing::spec(&[key(9)], 6);
        assert!(matches!(
            good.verify(&other),
            Err(ChainError::WrongChain { .. })
        ));
    }
}
