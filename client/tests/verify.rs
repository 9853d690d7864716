//! Receipts and answers checked offline, trusting only a chain spec: what a node
//! might hand back wrong is caught, with the reason.

use ledger_client::chain::testing::{self, key, receipt};
use ledger_client::chain::{ChainError, ChainSpec, Entry, Receipt};
use ledger_client::types::{CommittedView, EntryView, ReceiptView};
use ledger_client::{Verifier, VerifyError};

/// A chain, and the receipt of the third entry of its first block.
fn committed() -> (ChainSpec, Entry, Receipt) {
    let (spec, block, receipt) = receipt(2);
    (spec, block.entries[2].clone(), receipt)
}

fn commit_view(receipt: &Receipt) -> CommittedView {
    CommittedView {
        id: receipt.entry_id.to_hex(),
        height: receipt.header.height,
        block_hash: receipt.header.hash().to_hex(),
        receipt: ReceiptView::from(receipt),
        membership_proof: Vec::new(),
    }
}

#[test]
fn a_commit_proves_its_entry_and_nothing_else() {
    let (spec, entry, receipt) = committed();
    let verifier = Verifier::new(spec);
    let verified = verifier.committed(&commit_view(&receipt), &entry).unwrap();
    assert_eq!(verified.receipt, receipt);
    assert_eq!(verified.entry, Some(entry.clone()));

    // The node answers with another entry's receipt.
    let other = Entry::new(b"not what was submitted".to_vec());
    assert!(matches!(
        verifier.committed(&commit_view(&receipt), &other),
        Err(VerifyError::OtherEntry { .. })
    ));
    // Or says the commit is at another height than its receipt proves.
    let mut moved = commit_view(&receipt);
    moved.height += 1;
    assert!(matches!(
        verifier.committed(&moved, &entry),
        Err(VerifyError::Disagrees {
            field: "height",
            ..
        })
    ));
    // Or hands back a certificate too few members signed.
    let mut thin = receipt.clone();
    thin.certificate.signatures.truncate(2);
    assert!(matches!(
        verifier.committed(&commit_view(&thin), &entry),
        Err(VerifyError::Receipt(ChainError::Certificate(_)))
    ));
    // Another chain's verifier takes none of it.
    let foreign = Verifier::new(testing::spec(&[key(9)], 6));
    assert!(matches!(
        foreign.committed(&commit_view(&receipt), &entry),
        Err(VerifyError::Receipt(ChainError::WrongChain { .. }))
    ));
}

#[test]
fn an_entry_read_back_is_checked_against_its_receipt() {
    let (spec, entry, receipt) = committed();
    let verifier = Verifier::new(spec);
    let view = EntryView::committed(&entry, &receipt);
    assert_eq!(verifier.entry(&view).unwrap().entry, Some(entry.clone()));

    let mut other_data = view.clone();
    other_data.data_b64 = None;
    other_data.data = Some("forged".into());
    assert!(matches!(
        verifier.entry(&other_data),
        Err(VerifyError::OtherEntry { .. })
    ));
    let mut other_index = view.clone();
    other_index.log_index = Some(0);
    assert!(matches!(
        verifier.entry(&other_index),
        Err(VerifyError::Disagrees {
            field: "log_index",
            ..
        })
    ));
    let pending = EntryView::pending(&entry.id());
    assert!(matches!(
        verifier.entry(&pending),
        Err(VerifyError::NotCommitted { .. })
    ));
}

#[test]
fn a_saved_answer_of_any_shape_verifies() {
    let (spec, entry, receipt) = committed();
    let verifier = Verifier::new(spec);
    let shapes = [
        serde_json::to_value(ReceiptView::from(&receipt)).unwrap(),
        serde_json::to_value(commit_view(&receipt)).unwrap(),
        serde_json::to_value(EntryView::committed(&entry, &receipt)).unwrap(),
    ];
    for saved in &shapes {
        let verified = verifier.answer(saved).unwrap();
        assert_eq!(verified.receipt, receipt, "{saved}");
    }
    // A readable header that disagrees with the canonical one is refused.
    let mut tampered = shapes[1].clone();
    tampered["receipt"]["header"]["nonce"] = (receipt.header.nonce + 1).into();
    assert!(matches!(
        verifier.answer(&tampered),
        Err(VerifyError::MalformedReceipt(_))
    ));
    let mut claims = shapes[1].clone();
    claims["block_hash"] = "00".repeat(32).into();
    assert!(matches!(
        verifier.answer(&claims),
        Err(VerifyError::Disagrees {
            field: "block_hash",
            ..
        })
    ));
    // What a submit answers before the commit, and an entry read back pending, say
    // so rather than what a receipt lacks.
    let pending = serde_json::to_value(EntryView::pending(&entry.id())).unwrap();
    for (saved, said) in [
        (serde_json::json!({"id": "ab"}), "entry ab is accepted"),
        (pending, "is pending: there is no receipt to check yet"),
    ] {
        let error = verifier.answer(&saved).unwrap_err();
        assert!(matches!(error, VerifyError::NotCommitted { .. }), "{error}");
        assert!(error.to_string().contains(said), "{error}");
    }
    for saved in [
        serde_json::json!({"entry_id": "ab"}),
        serde_json::json!({"id": "ab", "status": "committed", "receipt": null}),
    ] {
        assert!(
            matches!(verifier.answer(&saved), Err(VerifyError::NoReceipt(_))),
            "{saved}"
        );
    }
}
