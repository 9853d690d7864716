//! Receipts checked offline, trusting only the chain's genesis: the inclusion proof,
//! the header's chain and proof of work, the commit certificate, and that the entry
//! the node handed back is the one the receipt proves.

use std::path::{Path, PathBuf};

use ledger_chain::{ChainError, ChainSpec, ChangeProof, Entry, Hash, MembershipHistory, Receipt};
use serde_json::Value;

use crate::types::{ChangeProofView, CommittedView, EntryView, ReceiptView, SubmitRequest};

/// Why an answer does not prove what it claims.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The genesis file cannot be read.
    #[error("{path}: {source}")]
    GenesisUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The genesis file is no chain's genesis.
    #[error("{path}: {source}")]
    Genesis {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: ChainError,
    },
    /// The answer carries no receipt: the entry is not committed (yet).
    #[error("entry {id} is {status}: there is no receipt to check yet")]
    NotCommitted {
        /// The entry id.
        id: String,
        /// What the node said of it.
        status: String,
    },
    /// The answer holds no receipt at all.
    #[error("no receipt in the answer: {0}")]
    NoReceipt(String),
    /// The receipt cannot be parsed.
    #[error("the receipt is malformed: {0}")]
    MalformedReceipt(ChainError),
    /// The entry beside the receipt cannot be parsed.
    #[error("the entry is malformed: {0}")]
    MalformedEntry(String),
    /// A field beside the receipt says something else than the receipt proves.
    #[error("the answer's {field} is {claimed} but its receipt proves {proven}")]
    Disagrees {
        /// The field.
        field: &'static str,
        /// What the answer says.
        claimed: String,
        /// What the receipt proves.
        proven: String,
    },
    /// The receipt proves another entry than the one submitted or returned.
    #[error("the entry's data hashes to {entry}, not to the receipt's entry {receipt}")]
    OtherEntry {
        /// The id of the entry at hand.
        entry: Hash,
        /// The id the receipt proves.
        receipt: Hash,
    },
    /// The entry is not valid on this chain (its author's signature, its size).
    #[error("the entry does not verify: {0}")]
    Entry(ChainError),
    /// The membership proof beside the receipt does not hold.
    #[error("the membership proof does not hold: {0}")]
    Membership(ChainError),
    /// The receipt does not prove its entry under a certified header of the chain.
    #[error("the receipt does not verify: {0}")]
    Receipt(ChainError),
    /// A consistency proof does not prove one log extends the other.
    #[error("the consistency proof does not verify: {0}")]
    Consistency(ChainError),
}

/// A receipt that verified, and the entry it proves when the answer carried it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The checked receipt.
    pub receipt: Receipt,
    /// The entry, when the answer held its data (always, from `get` and `submit`).
    pub entry: Option<Entry>,
    /// How many members were in force at the receipt's height, as the membership
    /// proof shows them.
    pub members: usize,
}

/// Checks answers against one chain's genesis, and nothing else.
#[derive(Clone, Debug)]
pub struct Verifier {
    spec: ChainSpec,
}

/// What an answer says beside its receipt.
#[derive(Default)]
struct Claims {
    id: Option<String>,
    height: Option<String>,
    log_index: Option<String>,
    block_hash: Option<String>,
}

impl Verifier {
    /// A verifier of the chain `spec` describes.
    pub fn new(spec: ChainSpec) -> Verifier {
        Verifier { spec }
    }

    /// A verifier of the chain whose genesis file (`genesis.toml`) is at `path`.
    pub fn from_genesis_file(path: impl AsRef<Path>) -> Result<Verifier, VerifyError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| VerifyError::GenesisUnreadable {
                path: path.to_owned(),
                source,
            })?;
        let spec = ChainSpec::from_toml(&text).map_err(|source| VerifyError::Genesis {
            path: path.to_owned(),
            source,
        })?;
        Ok(Verifier::new(spec))
    }

    /// The chain this verifier trusts.
    pub fn spec(&self) -> &ChainSpec {
        &self.spec
    }

    /// The memberships the `changes` establish from genesis, each change checked
    /// (its receipt certified by the members before it, its admin signatures).
    pub fn history(&self, changes: &[ChangeProofView]) -> Result<MembershipHistory, VerifyError> {
        let changes = changes
            .iter()
            .map(ChangeProof::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(VerifyError::Membership)?;
        MembershipHistory::verify(&self.spec, &changes).map_err(VerifyError::Membership)
    }

    /// Checks an answer of `GET /v1/entries/{id}`: committed, its receipt verifies,
    /// and its id, height, leaf index and data are what the receipt proves.
    pub fn entry(&self, view: &EntryView) -> Result<Verified, VerifyError> {
        let Some(receipt) = &view.receipt else {
            return Err(VerifyError::NotCommitted {
                id: view.id.clone(),
                status: view.status.clone(),
            });
        };
        let claims = Claims {
            id: Some(view.id.clone()),
            height: view.height.map(|height| height.to_string()),
            log_index: view.log_index.map(|index| index.to_string()),
            block_hash: None,
        };
        let history = self.history(&view.membership_proof)?;
        let data = SubmitRequest {
            data: view.data.clone(),
            data_b64: view.data_b64.clone(),
            author: view.author.clone(),
            sig: view.sig.clone(),
        };
        let entry = match data.data.is_some() || data.data_b64.is_some() {
            true => Some(data.into_entry().map_err(VerifyError::MalformedEntry)?),
            false => None,
        };
        self.check(receipt, &claims, entry, &history)
    }

    /// Checks the answer to submitting `entry` with `wait=commit`: its receipt
    /// verifies and proves `entry`, at the height and block the answer names.
    pub fn committed(&self, view: &CommittedView, entry: &Entry) -> Result<Verified, VerifyError> {
        let claims = Claims {
            id: Some(view.id.clone()),
            height: Some(view.height.to_string()),
            log_index: None,
            block_hash: Some(view.block_hash.clone()),
        };
        let history = self.history(&view.membership_proof)?;
        self.check(&view.receipt, &claims, Some(entry.clone()), &history)
    }

    /// Checks a saved answer as `ledgerctl verify` reads it: a bare receipt (of a
    /// block the genesis members certified), an entry with its receipt (`get`), or a
    /// commit (`submit --wait`), each with the membership proof it carries.
    pub fn answer(&self, saved: &Value) -> Result<Verified, VerifyError> {
        // An entry not committed yet: read back while pending, or as a submit
        // answered it before its commit (its id alone).
        if saved.get("receipt").is_none_or(Value::is_null) {
            let status = match saved.get("status") {
                // Committed yet without a receipt: the answer is what is wrong.
                Some(status) => Some(text(status)).filter(|status| status != "committed"),
                None => (saved.get("entry_id").is_none() && saved.get("id").is_some())
                    .then(|| "accepted".to_owned()),
            };
            if let Some(status) = status {
                return Err(VerifyError::NotCommitted {
                    id: saved.get("id").map(text).unwrap_or_default(),
                    status,
                });
            }
        }
        let Some(receipt) = saved.get("receipt") else {
            let view: ReceiptView = serde_json::from_value(saved.clone())
                .map_err(|error| VerifyError::NoReceipt(error.to_string()))?;
            let genesis = MembershipHistory::genesis(&self.spec);
            return self.check(&view, &Claims::default(), None, &genesis);
        };
        if receipt.is_null() {
            return Err(VerifyError::NoReceipt("its receipt is null".into()));
        }
        if saved.get("data").is_some() || saved.get("data_b64").is_some() {
            let view: EntryView = serde_json::from_value(saved.clone())
                .map_err(|error| VerifyError::MalformedEntry(error.to_string()))?;
            return self.entry(&view);
        }
        let view: ReceiptView = serde_json::from_value(receipt.clone())
            .map_err(|error| VerifyError::NoReceipt(error.to_string()))?;
        let changes: Vec<ChangeProofView> = match saved.get("membership_proof") {
            None => Vec::new(),
            Some(changes) => serde_json::from_value(changes.clone()).map_err(|_| {
                VerifyError::Membership(ChainError::Malformed {
                    what: "membership proof",
                    reason: "not a list of changes",
                })
            })?,
        };
        let history = self.history(&changes)?;
        let claims = Claims {
            id: saved.get("id").map(text),
            height: saved.get("height").map(text),
            log_index: saved.get("log_index").map(text),
            block_hash: saved.get("block_hash").map(text),
        };
        self.check(&view, &claims, None, &history)
    }

    fn check(
        &self,
        view: &ReceiptView,
        claims: &Claims,
        entry: Option<Entry>,
        history: &MembershipHistory,
    ) -> Result<Verified, VerifyError> {
        let receipt = Receipt::try_from(view).map_err(VerifyError::MalformedReceipt)?;
        let proven = [
            ("id", claims.id.clone(), receipt.entry_id.to_hex()),
            (
                "height",
                claims.height.clone(),
                receipt.header.height.to_string(),
            ),
            (
                "log_index",
                claims.log_index.clone(),
                receipt.log_index.to_string(),
            ),
            (
                "block_hash",
                claims.block_hash.clone(),
                receipt.header.hash().to_hex(),
            ),
        ];
        for (field, claimed, proven) in proven {
            if let Some(claimed) = claimed.filter(|claimed| *claimed != proven) {
                return Err(VerifyError::Disagrees {
                    field,
                    claimed,
                    proven,
                });
            }
        }
        if let Some(entry) = &entry {
            if entry.id() != receipt.entry_id {
                return Err(VerifyError::OtherEntry {
                    entry: entry.id(),
                    receipt: receipt.entry_id,
                });
            }
            entry
                .verify(&self.spec.chain_hash(), self.spec.params.max_entry_bytes)
                .map_err(VerifyError::Entry)?;
        }
        receipt
            .verify_in(&self.spec, history)
            .map_err(VerifyError::Receipt)?;
        let members = history.at(receipt.header.height).members.len();
        Ok(Verified {
            receipt,
            entry,
            members,
        })
    }
}

/// A JSON value as the text it holds, or as JSON when it is not a string.
fn text(value: &Value) -> String {
    value
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string())
}
