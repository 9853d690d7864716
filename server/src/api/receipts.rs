//! The `wait=commit` answer, with the parts every entry of a block shares (its
//! header twice, its certificate) rendered once a block rather than once an entry:
//! at 256 waiting clients, building and rendering a whole receipt per entry was 13% of
//! the API member's CPU. The bytes are those `serde_json` writes for a
//! [`CommittedView`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use super::types::{CertificateView, ChangeProofView, HeaderView};
use crate::chain::{to_hex, CommitCertificate, Header, Receipt};

#[cfg(test)]
use super::types::CommittedView;

/// Blocks whose shared parts are kept: enough for the few applied while their
/// receipts are still being answered.
const KEPT: usize = 4;

/// The shared parts of the last few blocks answered.
#[derive(Default)]
pub struct BlockParts(Mutex<VecDeque<Arc<Shared>>>);

/// One block's shared parts, and what they were rendered from.
struct Shared {
    header: Header,
    certificate: CommitCertificate,
    /// The block hash, in hex.
    block_hash: String,
    /// `"header":…,"header_hex":"…","certificate":…}`: the rest of the receipt object.
    tail: String,
}

/// The receipt's fields after its inclusion proof, in [`super::types::ReceiptView`]'s
/// order.
#[derive(Serialize)]
struct Tail<'a> {
    header: &'a HeaderView,
    header_hex: &'a str,
    certificate: &'a CertificateView,
}

impl BlockParts {
    /// The parts of `receipt`'s block, rendered now unless they were already. Both
    /// the header and the certificate must match: members may hold different
    /// quorums' certificates for one block.
    fn shared(&self, receipt: &Receipt) -> Result<Arc<Shared>, serde_json::Error> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = kept.iter().find(|shared| {
            shared.header == receipt.header && shared.certificate == receipt.certificate
        }) {
            return Ok(Arc::clone(shared));
        }
        let header_view = HeaderView::from(&receipt.header);
        let tail = serde_json::to_string(&Tail {
            header: &header_view,
            header_hex: &to_hex(&receipt.header.encode()),
            certificate: &CertificateView::from(&receipt.certificate),
        })?;
        let shared = Arc::new(Shared {
            header: receipt.header,
            certificate: receipt.certificate.clone(),
            block_hash: header_view.hash,
            // Without the opening brace, the tail closes the receipt object.
            tail: tail[1..].to_string(),
        });
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(Arc::clone(&shared));
        Ok(shared)
    }

    /// The JSON of the `wait=commit` answer for `receipt`.
    pub fn committed_json(
        &self,
        receipt: &Receipt,
        membership_proof: &[ChangeProofView],
    ) -> Result<Vec<u8>, serde_json::Error> {
        let shared = self.shared(receipt)?;
        let id = receipt.entry_id.to_hex();
        let mut out =
            Vec::with_capacity(256 + shared.tail.len() + 67 * receipt.inclusion_proof.len());
        let mut push = |parts: &[&[u8]]| parts.iter().for_each(|part| out.extend(*part));
        push(&[
            b"{\"id\":\"",
            id.as_bytes(),
            b"\",\"height\":",
            receipt.header.height.to_string().as_bytes(),
            b",\"block_hash\":\"",
            shared.block_hash.as_bytes(),
            b"\",\"receipt\":{\"entry_id\":\"",
            id.as_bytes(),
            b"\",\"log_index\":",
            receipt.log_index.to_string().as_bytes(),
            b",\"log_size\":",
            receipt.header.log_size.to_string().as_bytes(),
            b",\"inclusion_proof\":[",
        ]);
        for (i, node) in receipt.inclusion_proof.iter().enumerate() {
            let separator: &[u8] = if i == 0 { b"\"" } else { b",\"" };
            push(&[separator, node.to_hex().as_bytes(), b"\""]);
        }
        push(&[b"],", shared.tail.as_bytes()]);
        if !membership_proof.is_empty() {
            push(&[b",\"membership_proof\":"]);
            serde_json::to_writer(&mut out, membership_proof)?;
        }
        out.push(b'}');
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    /// Entry `index` of a five-entry block, certified by three of four members.
    fn receipt(index: u64) -> Receipt {
        testing::receipt(index).2
    }

    fn serde_bytes(receipt: &Receipt, membership_proof: Vec<ChangeProofView>) -> String {
        let view = CommittedView {
            id: receipt.entry_id.to_hex(),
            height: receipt.header.height,
            block_hash: receipt.header.hash().to_hex(),
            receipt: receipt.into(),
            membership_proof,
        };
        serde_json::to_string(&view).unwrap()
    }

    fn ours(parts: &BlockParts, receipt: &Receipt, proof: &[ChangeProofView]) -> String {
        String::from_utf8(parts.committed_json(receipt, proof).unwrap()).unwrap()
    }

    /// Byte for byte what serde writes: for a first entry, for another of the same
    /// block (its parts kept), with an empty proof, and for the same block under
    /// another quorum's certificate (rendered again, not served from the first).
    #[test]
    fn the_answer_is_the_committed_view_serde_writes() {
        let parts = BlockParts::default();
        let mut no_proof = receipt(2);
        no_proof.inclusion_proof.clear();
        let mut other_quorum = receipt(3);
        other_quorum.certificate.signatures.remove(0);
        for receipt in [receipt(0), receipt(4), no_proof, other_quorum] {
            assert_eq!(
                ours(&parts, &receipt, &[]),
                serde_bytes(&receipt, Vec::new())
            );
        }
        assert_eq!(
            parts.0.lock().unwrap().len(),
            2,
            "one block, two certificates"
        );
    }

    #[test]
    fn a_membership_proof_follows_the_receipt() {
        let parts = BlockParts::default();
        let proof = vec![ChangeProofView {
            reconfiguration: "00ff".into(),
            description: "adds a member".into(),
            receipt: (&receipt(1)).into(),
        }];
        let answered = receipt(2);
        assert_eq!(
            ours(&parts, &answered, &proof),
            serde_bytes(&answered, proof)
        );
    }

    #[test]
    fn only_the_last_few_blocks_are_kept() {
        let parts = BlockParts::default();
        for view in 0..10 {
            let mut receipt = receipt(1);
            receipt.certificate.view = view;
            ours(&parts, &receipt, &[]);
        }
        assert_eq!(parts.0.lock().unwrap().len(), KEPT);
    }
}
