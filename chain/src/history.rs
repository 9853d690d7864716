//! Membership proofs: the chain of membership changes since genesis, each proven by a
//! receipt certified under the membership before it, so a client that trusts only the
//! genesis file learns who certified any later block.

use super::codec::Reader;
use super::HEADER_LEN;
use super::{ChainError, ChainSpec, CommitCertificate, Entry, Hash, Header, Membership, Receipt};

/// Most hashes in a change's inclusion proof: a log of 2^64 entries needs 64.
const MAX_PROOF_HASHES: u8 = 64;

/// One membership change as a client checks it: the reconfiguration entry and the
/// receipt that proves it committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeProof {
    /// The entry that carries the change (its data is the reconfiguration).
    pub entry: Entry,
    /// Its receipt, certified by the membership in force at its block.
    pub receipt: Receipt,
}

impl ChangeProof {
    /// The canonical encoding (docs/FORMAT.md, "Snapshot"): the reconfiguration
    /// (the entry's data), its leaf index, header, inclusion proof and certificate.
    /// The entry id is not sent: it is the reconfiguration entry's.
    pub fn encode(&self) -> Vec<u8> {
        let certificate = self.receipt.certificate.encode();
        let data = &self.entry.data;
        let mut out = Vec::with_capacity(
            4 + data.len()
                + 8
                + HEADER_LEN
                + 1
                + 32 * self.receipt.inclusion_proof.len()
                + 4
                + certificate.len(),
        );
        // A reconfiguration is far below 4 GiB, and a proof below 256 hashes.
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&self.receipt.log_index.to_be_bytes());
        out.extend_from_slice(&self.receipt.header.encode());
        out.push(self.receipt.inclusion_proof.len() as u8);
        for hash in &self.receipt.inclusion_proof {
            out.extend_from_slice(hash.as_bytes());
        }
        out.extend_from_slice(&(certificate.len() as u32).to_be_bytes());
        out.extend_from_slice(&certificate);
        out
    }

    /// Decodes what [`ChangeProof::encode`] wrote, refusing lengths beyond the bytes
    /// left before reading them.
    pub fn decode(bytes: &[u8]) -> Result<ChangeProof, ChainError> {
        let mut reader = Reader::new(bytes, "membership change");
        let len = reader.u32()? as usize;
        let entry = Entry::reconfiguration(reader.take(len)?.to_vec());
        let log_index = reader.u64()?;
        let header = Header::decode(reader.take(HEADER_LEN)?)?;
        let hashes = reader.u8()?;
        if hashes > MAX_PROOF_HASHES {
            return Err(ChainError::Malformed {
                what: "membership change",
                reason: "an inclusion proof longer than any log needs",
            });
        }
        let inclusion_proof = (0..hashes)
            .map(|_| reader.hash())
            .collect::<Result<Vec<Hash>, _>>()?;
        let len = reader.u32()? as usize;
        let certificate = CommitCertificate::decode(reader.take(len)?)?;
        reader.finish()?;
        Ok(ChangeProof {
            receipt: Receipt {
                entry_id: entry.id(),
                log_index,
                header,
                inclusion_proof,
                certificate,
            },
            entry,
        })
    }
}

/// The memberships a chain went through, as a membership proof establishes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipHistory {
    /// Each epoch's membership from genesis, in order, as a node's `membership` table
    /// keeps them: each with the change that ended it, the last with the change on
    /// its way, if any.
    epochs: Vec<Membership>,
}

impl MembershipHistory {
    /// The history of a chain that never changed its membership, or whose changes
    /// are not known: the genesis membership for every height.
    pub fn genesis(spec: &ChainSpec) -> MembershipHistory {
        MembershipHistory {
            epochs: vec![Membership::genesis(spec)],
        }
    }

    /// Checks `changes`, in block order, from the genesis membership: each receipt
    /// proves its entry under a header certified by the membership in force at its
    /// height (in that epoch's signing domain), and each change is one that
    /// membership accepts (the admins signed it for that epoch, nothing else on its
    /// way, a valid change). A node that leaves changes out can only make the
    /// history end early; a receipt above a change it left out is then checked
    /// against the members before it.
    pub fn verify(
        spec: &ChainSpec,
        changes: &[ChangeProof],
    ) -> Result<MembershipHistory, ChainError> {
        let mut history = MembershipHistory::genesis(spec);
        let mut last_height = 0;
        for (index, change) in changes.iter().enumerate() {
            let height = change.receipt.header.height;
            let refuse = |reason: ChainError| ChainError::MembershipProof {
                index,
                height,
                reason: Box::new(reason),
            };
            if height <= last_height {
                return Err(refuse(ChainError::Malformed {
                    what: "membership proof",
                    reason: "changes are not in block order",
                }));
            }
            last_height = height;
            change.receipt.verify_in(spec, &history).map_err(refuse)?;
            if !change.entry.is_reconfiguration() || change.entry.id() != change.receipt.entry_id {
                return Err(refuse(ChainError::Malformed {
                    what: "membership proof",
                    reason: "the receipt proves another entry than the change",
                }));
            }
            history
                .apply_block(spec, height, std::slice::from_ref(&change.entry))
                .map_err(refuse)?;
        }
        Ok(history)
    }

    /// Follows the block at `height` holding `entries`, as a node's store does: a
    /// change due there comes into force, and the block's own change, checked, is
    /// recorded on its way. Blocks must come in height order.
    pub fn apply_block(
        &mut self,
        spec: &ChainSpec,
        height: u64,
        entries: &[Entry],
    ) -> Result<(), ChainError> {
        let last = self.latest();
        if last.pending.is_none() && !entries.iter().any(Entry::is_reconfiguration) {
            return Ok(());
        }
        let mut next = last.clone();
        next.apply_block(spec, height, entries)?;
        match next.epoch == last.epoch {
            true => *self.epochs.last_mut().expect("never empty") = next,
            false => self.epochs.push(next),
        }
        Ok(())
    }

    /// The membership that orders and certifies the block at `height`.
    pub fn at(&self, height: u64) -> Membership {
        self.epochs
            .iter()
            .rev()
            .find(|membership| membership.since <= height)
            .unwrap_or(&self.epochs[0])
            .clone()
            .as_of(height)
    }

    /// The membership once every change the history knows of is in force: who
    /// orders the chain now, as far as the proof goes.
    pub fn last(&self) -> Membership {
        self.at(u64::MAX)
    }

    fn latest(&self) -> &Membership {
        self.epochs
            .last()
            .expect("a history starts with the genesis membership")
    }

    /// Each epoch's membership from genesis, as a node's `membership` table keeps
    /// them (keyed by `since`).
    pub fn epochs(&self) -> &[Membership] {
        &self.epochs
    }

    /// The height of the block that the membership ordering the block after
    /// `height` starts above: where a replica of that epoch starts (0 for genesis).
    pub fn epoch_base(&self, height: u64) -> u64 {
        self.at(height.saturating_add(1)).since.saturating_sub(1)
    }

    /// How many changes the history holds: those in force and one on its way.
    pub fn changes(&self) -> usize {
        self.epochs.len() - 1 + usize::from(self.latest().pending.is_some())
    }
}

impl Receipt {
    /// [`Receipt::verify`] for a chain whose membership may have changed: the
    /// certificate is checked against the membership `history` says was in force at
    /// the receipt's height.
    pub fn verify_in(
        &self,
        spec: &ChainSpec,
        history: &MembershipHistory,
    ) -> Result<(), ChainError> {
        self.verify_under(spec, &history.at(self.header.height))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{inclusion_proof, MemoryLog};
    use crate::testing::{certify_under, entries, key, next_block, spec_with_admins};
    use crate::{Block, Change, CompactRange, Header, Reconfiguration};
    use ed25519_dalek::SigningKey;

    /// A chain being built: its blocks' headers, its log, and the keys of its
    /// current members, certifying each block under the right epoch's domain.
    struct Chain {
        spec: ChainSpec,
        tip: Header,
        log: MemoryLog,
        range: CompactRange,
    }

    impl Chain {
        fn new(spec: ChainSpec) -> Chain {
            let tip = spec.genesis_block().header;
            Chain {
                spec,
                tip,
                log: MemoryLog::new(),
                range: CompactRange::new(),
            }
        }

        /// Appends a block of `entries`, certified by `signers` in `epoch`; the
        /// receipt of its first entry.
        fn block(&mut self, entries: Vec<Entry>, signers: &[SigningKey], epoch: u64) -> Receipt {
            let block: Block = next_block(&self.tip, &self.range, entries, 0);
            let first = self.log.size();
            for id in block.entry_ids() {
                self.log.push(id.as_bytes());
                self.range
                    .append(crate::merkle::leaf_hash(id.as_bytes()), |_, _, _| {});
            }
            self.tip = block.header;
            let domain = crate::epoch_domain(&self.spec.chain_hash(), epoch);
            Receipt {
                entry_id: block.entries[0].id(),
                log_index: first,
                header: block.header,
                inclusion_proof: inclusion_proof(&self.log, first, self.log.size()).unwrap(),
                certificate: certify_under(signers, &block, &domain),
            }
        }

        fn change(&mut self, epoch: u64, change: Change, signers: &[SigningKey]) -> ChangeProof {
            let mut reconfiguration = Reconfiguration::new(epoch, change).unwrap();
            for admin in [key(20), key(21)] {
                reconfiguration.sign(&admin, &self.spec.chain_hash());
            }
            let entry = reconfiguration.to_entry();
            let receipt = self.block(vec![entry.clone()], signers, epoch);
            ChangeProof { entry, receipt }
        }

        /// Blocks of filler up to (not including) `height`, certified by `signers`.
        fn fill_to(&mut self, height: u64, signers: &[SigningKey], epoch: u64) {
            while self.tip.height + 1 < height {
                let tag = self.tip.height;
                self.block(entries(tag, 1, 20), signers, epoch);
            }
        }
    }

    /// Members 1-4, admins 20-22 (threshold 2), a checkpoint every 4 blocks; member
    /// 4 is removed by a change in block 2 (in force from block 5).
    fn removed_four() -> (Chain, Vec<ChangeProof>) {
        let members: Vec<_> = (1..=4).map(key).collect();
        let spec = spec_with_admins(&members, 0, 4, &[key(20), key(21), key(22)], 2);
        let mut chain = Chain::new(spec);
        chain.fill_to(2, &members[..3], 0);
        let removal = Change::Remove {
            public_key: key(4).verifying_key(),
        };
        let proof = chain.change(0, removal, &members[..3]);
        chain.fill_to(5, &members[..3], 0);
        (chain, vec![proof])
    }

    #[test]
    fn a_receipt_after_a_change_is_checked_against_the_new_members() {
        let (mut chain, changes) = removed_four();
        let history = MembershipHistory::verify(&chain.spec, &changes).unwrap();
        assert_eq!(history.at(4).epoch, 0);
        assert_eq!(history.at(5).epoch, 1);
        assert_eq!(history.last().members.len(), 3);
        assert_eq!(history.epochs().len(), 1, "no block of epoch 1 was applied");
        let three: Vec<_> = (1..=3).map(key).collect();
        // n = 3 now: q = 2 (f = 0) of members 1-3, in epoch 1's domain.
        let receipt = chain.block(entries(99, 1, 20), &three[..2], 1);
        assert_eq!(receipt.header.height, 5);
        receipt.verify_in(&chain.spec, &history).unwrap();
        // Without the proof, a client holds the genesis members to it and refuses it.
        assert!(receipt.verify(&chain.spec).is_err());
    }

    #[test]
    fn a_removed_member_set_cannot_certify_past_its_epoch() {
        let (mut chain, changes) = removed_four();
        let history = MembershipHistory::verify(&chain.spec, &changes).unwrap();
        // The old four sign block 5 in epoch 0's domain, as they did before.
        let old: Vec<_> = (1..=4).map(key).collect();
        let forged = chain.block(entries(98, 1, 20), &old, 0);
        assert!(matches!(
            forged.verify_in(&chain.spec, &history),
            Err(ChainError::Certificate(_))
        ));
    }

    #[test]
    fn a_change_proof_decodes_to_what_was_encoded() {
        let (_, changes) = removed_four();
        let bytes = changes[0].encode();
        assert_eq!(ChangeProof::decode(&bytes).unwrap(), changes[0]);
        for cut in [0, 3, 10, bytes.len() - 1] {
            assert!(ChangeProof::decode(&bytes[..cut]).is_err(), "{cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ChangeProof::decode(&longer).is_err());
    }

    #[test]
    fn a_proof_that_does_not_hold_is_refused_with_its_change() {
        let (chain, changes) = removed_four();
        let spec = &chain.spec;
        let mut unsigned = changes.clone();
        let mut reconfiguration = Reconfiguration::decode(&unsigned[0].entry.data).unwrap();
        reconfiguration.signatures.truncate(1);
        unsigned[0].entry = reconfiguration.to_entry();
        assert!(matches!(
            MembershipHistory::verify(spec, &unsigned),
            Err(ChainError::MembershipProof { index: 0, .. })
        ));
        let mut thin = changes.clone();
        thin[0].receipt.certificate.signatures.truncate(2);
        assert!(MembershipHistory::verify(spec, &thin).is_err());
        let twice = [changes[0].clone(), changes[0].clone()];
        assert!(MembershipHistory::verify(spec, &twice).is_err());
        let mut plain = changes;
        plain[0].entry = Entry::new(plain[0].entry.data.clone());
        assert!(MembershipHistory::verify(spec, &plain).is_err());
    }
}
