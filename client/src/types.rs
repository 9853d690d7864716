//! JSON shapes of the API. Hashes, keys and signatures are lowercase hex. The node
//! answers with these types and the client parses the same ones.

use base64::Engine;
use serde::{Deserialize, Serialize};

use ledger_chain::{
    to_hex, Author, ChainError, ChangeProof, CommitCertificate, CommitSignature, Entry, EntryKind,
    Hash, Header, Receipt,
};

/// `POST /v1/entries` body: exactly one of `data` and `data_b64`; `author` and `sig`
/// together or not at all. Its schema (below) says the same as a `oneOf`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The payload as UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The payload as standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    /// Author's ed25519 public key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Author's signature over the entry's signing digest, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for SubmitRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type,
        };
        let string = |description: &str, pattern: Option<&str>| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
                .pattern(pattern)
        };
        let shape = |payload: &str, signed: bool| {
            let mut object = ObjectBuilder::new()
                .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
            object = match payload {
                "data" => object.property("data", string("The payload as UTF-8 text", None)),
                _ => object.property(
                    "data_b64",
                    string(
                        "The payload as standard base64",
                        Some("^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"),
                    ),
                ),
            }
            .required(payload);
            if signed {
                object = object
                    .property(
                        "author",
                        string(
                            "Author's ed25519 public key, hex",
                            Some("^[0-9a-fA-F]{64}$"),
                        ),
                    )
                    .property(
                        "sig",
                        string("Author's signature, hex", Some("^[0-9a-fA-F]{128}$")),
                    )
                    .required("author")
                    .required("sig");
            }
            object
        };
        OneOfBuilder::new()
            .item(shape("data", false))
            .item(shape("data_b64", false))
            .item(shape("data", true))
            .item(shape("data_b64", true))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for SubmitRequest {}

/// Standard base64 that also takes non-canonical trailing bits, as the documented
/// pattern does: the entry id covers the decoded bytes, so nothing depends on them.
const BASE64_LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

fn hex_array<const N: usize>(text: &str, what: &'static str) -> Result<[u8; N], ChainError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| ChainError::BadHex {
        what,
        expected_bytes: N,
    })?;
    Ok(out)
}

fn hash(text: &str) -> Result<Hash, ChainError> {
    hex_array(text, "hash").map(Hash)
}

impl SubmitRequest {
    /// The entry this request describes, or what is malformed about it.
    pub fn into_entry(self) -> Result<Entry, String> {
        let data = match (self.data, self.data_b64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => BASE64_LENIENT
                .decode(encoded)
                .map_err(|error| format!("data_b64 is not base64: {error}"))?,
            _ => return Err("give exactly one of data and data_b64".into()),
        };
        let author = match (self.author, self.sig) {
            (None, None) => None,
            (Some(author), Some(sig)) => Some(Author {
                public_key: hex_array(&author, "author").map_err(|error| error.to_string())?,
                signature: hex_array(&sig, "sig").map_err(|error| error.to_string())?,
            }),
            _ => return Err("author and sig go together".into()),
        };
        Ok(Entry {
            data,
            author,
            kind: EntryKind::Client,
        })
    }

    /// The request for `entry`, with `data` when it is UTF-8.
    pub fn from_entry(entry: &Entry) -> SubmitRequest {
        let (data, data_b64) = data_fields(&entry.data);
        SubmitRequest {
            data,
            data_b64,
            author: entry.author.map(|author| to_hex(&author.public_key)),
            sig: entry.author.map(|author| to_hex(&author.signature)),
        }
    }
}

fn data_fields(data: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(data) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(data)),
        ),
    }
}

/// A membership change for `POST /v1/admin/reconfigurations`: the change file
/// `ledgerctl change new` writes and the admins sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeRequest {
    /// The signed change's canonical encoding, hex (docs/FORMAT.md, "Reconfiguration").
    pub reconfiguration: String,
    /// What it does, for people; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The epoch it was signed for, for people; the encoding's counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// `202` answer to a membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeAccepted {
    /// The id of the entry that carries it.
    pub id: String,
    /// What it does.
    pub change: String,
    /// The epoch it applies to.
    pub epoch: u64,
}

/// `202` answer to a submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Accepted {
    /// The entry id.
    pub id: String,
}

/// `?wait=commit` answer, and one item of a batch answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommittedView {
    /// The entry id.
    pub id: String,
    /// Height of its block.
    pub height: u64,
    /// Hash of its block.
    pub block_hash: String,
    /// Proof of the commitment.
    pub receipt: ReceiptView,
    /// The membership changes ordered before its block, each with its receipt:
    /// how a client that trusts only the genesis file learns who certified it.
    /// Absent while the membership is the genesis one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub membership_proof: Vec<ChangeProofView>,
}

/// A header as JSON; `hash` is computed, the rest are the header's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeaderView {
    /// Height.
    pub height: u64,
    /// Block hash.
    pub hash: String,
    /// Parent hash.
    pub prev_hash: String,
    /// Proposer's clock, ms.
    pub timestamp_ms: u64,
    /// Log size after the block.
    pub log_size: u64,
    /// Log root after the block.
    pub log_root: String,
    /// Difficulty, leading zero bits.
    pub difficulty: u32,
    /// PoW nonce.
    pub nonce: u64,
    /// Header format version.
    pub version: u32,
    /// Chain hash.
    pub chain_hash: String,
}

impl From<&Header> for HeaderView {
    fn from(header: &Header) -> HeaderView {
        HeaderView {
            height: header.height,
            hash: header.hash().to_hex(),
            prev_hash: header.prev_hash.to_hex(),
            timestamp_ms: header.timestamp_ms,
            log_size: header.log_size,
            log_root: header.log_root.to_hex(),
            difficulty: header.difficulty,
            nonce: header.nonce,
            version: header.version,
            chain_hash: header.chain_hash.to_hex(),
        }
    }
}

/// A block as JSON: its header's fields and its entry ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlockView {
    /// The header.
    #[serde(flatten)]
    pub header: HeaderView,
    /// Entry ids in log order.
    pub entries: Vec<String>,
}

/// One commit signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignatureView {
    /// Signer's node id.
    pub node_id: String,
    /// ed25519 signature, hex.
    pub signature: String,
}

/// A commit certificate as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificateView {
    /// The view of the commits.
    pub view: u64,
    /// Block height.
    pub height: u64,
    /// Block hash.
    pub block_hash: String,
    /// The signatures.
    pub signatures: Vec<SignatureView>,
}

impl From<&CommitCertificate> for CertificateView {
    fn from(certificate: &CommitCertificate) -> CertificateView {
        CertificateView {
            view: certificate.view,
            height: certificate.height,
            block_hash: certificate.block_hash.to_hex(),
            signatures: certificate
                .signatures
                .iter()
                .map(|signature| SignatureView {
                    node_id: signature.node_id.to_hex(),
                    signature: to_hex(&signature.signature),
                })
                .collect(),
        }
    }
}

impl TryFrom<&CertificateView> for CommitCertificate {
    type Error = ChainError;

    fn try_from(view: &CertificateView) -> Result<CommitCertificate, ChainError> {
        Ok(CommitCertificate {
            view: view.view,
            height: view.height,
            block_hash: hash(&view.block_hash)?,
            signatures: view
                .signatures
                .iter()
                .map(|signature| {
                    Ok(CommitSignature {
                        node_id: hash(&signature.node_id)?,
                        signature: hex_array(&signature.signature, "signature")?,
                    })
                })
                .collect::<Result<_, ChainError>>()?,
        })
    }
}

/// A receipt as JSON. `header_hex` is the canonical header; verifiers use it, and
/// `header` is its readable copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReceiptView {
    /// The entry id.
    pub entry_id: String,
    /// Its leaf index.
    pub log_index: u64,
    /// The tree size the proof is for (the header's log size).
    pub log_size: u64,
    /// Inclusion proof, leaf side first.
    pub inclusion_proof: Vec<String>,
    /// The committing block's header.
    pub header: HeaderView,
    /// The same header, canonically encoded.
    pub header_hex: String,
    /// The block's commit certificate.
    pub certificate: CertificateView,
}

impl From<&Receipt> for ReceiptView {
    fn from(receipt: &Receipt) -> ReceiptView {
        ReceiptView {
            entry_id: receipt.entry_id.to_hex(),
            log_index: receipt.log_index,
            log_size: receipt.header.log_size,
            inclusion_proof: receipt.inclusion_proof.iter().map(Hash::to_hex).collect(),
            header: HeaderView::from(&receipt.header),
            header_hex: to_hex(&receipt.header.encode()),
            certificate: CertificateView::from(&receipt.certificate),
        }
    }
}

impl TryFrom<&ReceiptView> for Receipt {
    type Error = ChainError;

    /// Parses a receipt, trusting only `header_hex` for the header and refusing a
    /// readable copy or a log size that disagrees with it.
    fn try_from(view: &ReceiptView) -> Result<Receipt, ChainError> {
        let bytes = hex::decode(&view.header_hex).map_err(|_| ChainError::BadHex {
            what: "header_hex",
            expected_bytes: ledger_chain::HEADER_LEN,
        })?;
        let header = Header::decode(&bytes)?;
        if HeaderView::from(&header) != view.header || view.log_size != header.log_size {
            return Err(ChainError::Malformed {
                what: "receipt",
                reason: "header fields disagree with header_hex",
            });
        }
        Ok(Receipt {
            entry_id: hash(&view.entry_id)?,
            log_index: view.log_index,
            header,
            inclusion_proof: view
                .inclusion_proof
                .iter()
                .map(|p| hash(p))
                .collect::<Result<_, _>>()?,
            certificate: CommitCertificate::try_from(&view.certificate)?,
        })
    }
}

/// A membership change and the receipt of the entry that carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeProofView {
    /// The signed change's canonical encoding, hex (the entry's data).
    pub reconfiguration: String,
    /// What it does, for people; the encoding is what counts.
    pub description: String,
    /// The receipt of its entry.
    pub receipt: ReceiptView,
}

impl From<&ChangeProof> for ChangeProofView {
    fn from(proof: &ChangeProof) -> ChangeProofView {
        let description = ledger_chain::Reconfiguration::decode(&proof.entry.data)
            .map(|reconfiguration| reconfiguration.change.to_string())
            .unwrap_or_default();
        ChangeProofView {
            reconfiguration: to_hex(&proof.entry.data),
            description,
            receipt: ReceiptView::from(&proof.receipt),
        }
    }
}

impl TryFrom<&ChangeProofView> for ChangeProof {
    type Error = ChainError;

    fn try_from(view: &ChangeProofView) -> Result<ChangeProof, ChainError> {
        let data = hex::decode(&view.reconfiguration).map_err(|_| ChainError::Malformed {
            what: "membership proof",
            reason: "a reconfiguration is not hex",
        })?;
        Ok(ChangeProof {
            entry: Entry::reconfiguration(data),
            receipt: Receipt::try_from(&view.receipt)?,
        })
    }
}

/// `GET /v1/entries/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntryView {
    /// The entry id.
    pub id: String,
    /// `pending` or `committed`.
    pub status: String,
    /// Payload as text, when UTF-8 (committed entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Payload as base64 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    /// Author key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Author signature, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// Height of its block, once committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// Leaf index, once committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_index: Option<u64>,
    /// Proof, once committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<ReceiptView>,
    /// The membership changes ordered before its block (see [`CommittedView`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub membership_proof: Vec<ChangeProofView>,
}

impl EntryView {
    /// A pending entry: only its id is known to be accepted.
    pub fn pending(id: &Hash) -> EntryView {
        EntryView {
            id: id.to_hex(),
            status: "pending".into(),
            data: None,
            data_b64: None,
            author: None,
            sig: None,
            height: None,
            log_index: None,
            receipt: None,
            membership_proof: Vec::new(),
        }
    }

    /// A committed entry with its receipt.
    pub fn committed(entry: &Entry, receipt: &Receipt) -> EntryView {
        let request = SubmitRequest::from_entry(entry);
        EntryView {
            id: receipt.entry_id.to_hex(),
            status: "committed".into(),
            data: request.data,
            data_b64: request.data_b64,
            author: request.author,
            sig: request.sig,
            height: Some(receipt.header.height),
            log_index: Some(receipt.log_index),
            receipt: Some(ReceiptView::from(receipt)),
            membership_proof: Vec::new(),
        }
    }
}

/// `GET /v1/proofs/consistency`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsistencyView {
    /// Old log size.
    pub from: u64,
    /// New log size.
    pub to: u64,
    /// Root at `from`.
    pub from_root: String,
    /// Root at `to`.
    pub to_root: String,
    /// RFC 9162 consistency proof.
    pub proof: Vec<String>,
}

/// The membership in force, the nodes that follow it, and a change on its way
/// (`/v1/members`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembersView {
    /// Changes in force since genesis.
    pub epoch: u64,
    /// The first height this membership orders.
    pub since: u64,
    /// Faults tolerated, f = ⌊(n − 1) / 3⌋.
    pub f: usize,
    /// Votes a certificate needs, q = ⌈(n + f + 1) / 2⌉.
    pub quorum: usize,
    /// The voting members, in primary rotation order.
    pub members: Vec<MemberView>,
    /// Nodes that receive blocks and do not vote.
    pub learners: Vec<LearnerView>,
    /// A change ordered and not yet in force.
    pub pending: Option<PendingChangeView>,
    /// Who may change the membership; absent, it is fixed at genesis.
    pub admins: Option<AdminsView>,
    /// Every change ordered since genesis with its receipt, in block order: what a
    /// client checks the membership in force against, trusting only the genesis.
    #[serde(default)]
    pub changes: Vec<ChangeProofView>,
}

/// A learner in `/v1/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LearnerView {
    /// Node id.
    pub node_id: String,
    /// ed25519 public key.
    pub public_key: String,
    /// Peer address the change named.
    pub p2p_addr: Option<String>,
    /// API address the change named.
    pub api_addr: Option<String>,
    /// Its height, as its API said when asked for this answer (the members ask it
    /// the same before promoting it).
    pub height: Option<u64>,
    /// How many blocks it is behind the answering node.
    pub behind: Option<u64>,
    /// Why it could not be asked, when it could not.
    pub last_error: Option<String>,
}

/// A membership change on its way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PendingChangeView {
    /// `add_learner`, `promote` or `remove`.
    pub kind: String,
    /// The key it is about.
    pub public_key: String,
    /// What it does, in words.
    pub description: String,
    /// The block that holds it.
    pub height: u64,
    /// The first height ordered by the membership after it.
    pub in_force_from: u64,
}

/// The genesis admins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdminsView {
    /// Their ed25519 public keys.
    pub keys: Vec<String>,
    /// Distinct admin signatures a change needs.
    pub threshold: usize,
}

/// A member in `/v1/status` and `/v1/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberView {
    /// Node id.
    pub node_id: String,
    /// ed25519 public key.
    pub public_key: String,
    /// Peer address from the genesis file.
    pub p2p_addr: Option<String>,
    /// API address from the genesis file.
    pub api_addr: Option<String>,
    /// Whether this node is connected to it (itself: always).
    pub connected: bool,
    /// Why the last connection to or from it failed, while it is not connected.
    pub last_error: Option<String>,
    /// Its plugin set as its handshake reported it (`name@version:sha256`, comma
    /// separated; empty for none), once it connected.
    pub plugins: Option<String>,
}

/// The settings a node runs with, as `/v1/status` shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SettingsView {
    /// Most entries per block (at most the genesis limit).
    pub max_block_entries: usize,
    /// Longest an entry waits for others to join its block, ms.
    pub max_block_delay_ms: u64,
    /// Most entries waiting to be committed.
    pub pool_capacity: usize,
    /// Threads the miner uses.
    pub mining_threads: usize,
    /// A cluster primary's blocks proposed and not yet prepared before new entries
    /// wait for one to prepare; absent where no replica runs (alone, a follower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_blocks_in_flight: Option<usize>,
    /// A cluster primary's least time between two blocks while entries keep
    /// coming, ms (0: none); absent where no replica runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_block_interval_ms: Option<u64>,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusView {
    /// This node's id.
    pub node_id: String,
    /// Chain name.
    pub chain_id: String,
    /// Chain hash.
    pub chain_hash: String,
    /// Genesis block hash.
    pub genesis_hash: String,
    /// What this node is to its chain: `alone` (the only member), `member` (one of
    /// several), `follower` (not a member: it checks and applies the members'
    /// committed blocks, never votes, and forwards submits to them), `learner` (a
    /// follower the membership names, which a promotion makes a member) or `removed`
    /// (a member a change removed, until it stops).
    pub role: String,
    /// On a follower or learner: how many blocks the member it reads from is ahead
    /// of it, as last asked (about once a second); absent until a member answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<u64>,
    /// On a follower or learner: the client API of the member it reads blocks from
    /// now, and forwards submits to first (its `members` show no connections: a
    /// follower holds no peer links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads_from: Option<String>,
    /// Current PBFT view (0 on a follower, which takes no part in views).
    pub view: u64,
    /// Primary of the view (empty on a follower).
    pub primary: String,
    /// Height of the last applied block.
    pub height: u64,
    /// Hash of the last applied block.
    pub tip_hash: String,
    /// Entries in the log.
    pub log_size: u64,
    /// The lowest height above genesis whose block this node holds: 1, or the height
    /// of the snapshot it was restored from (every entry is provable either way).
    pub history_from: u64,
    /// Height of the stable checkpoint, when there is one.
    pub stable_checkpoint: Option<u64>,
    /// On a follower or learner: its signature, with its node key, of `height` for
    /// this chain (hex), which a promotion of it carries (docs/FORMAT.md, "Learner
    /// progress"); absent on a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height_signature: Option<String>,
    /// On a member that lost its disk: it votes again once its height reaches this
    /// (README, "Joining from a snapshot"); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abstaining_until: Option<u64>,
    /// Faults tolerated.
    pub f: usize,
    /// Matching votes that make a certificate: ⌈(n + f + 1) / 2⌉.
    pub quorum: usize,
    /// The members.
    pub members: Vec<MemberView>,
    /// Difficulty the next block needs: the difficulty plugin's verdict, or the
    /// genesis difficulty.
    pub difficulty: u32,
    /// Entries waiting to be committed.
    pub pool_size: usize,
    /// The settings in force (ledgerd.toml, as this node applies them).
    pub settings: SettingsView,
    /// This node's plugins, in the order it calls them.
    pub plugins: Vec<Fingerprint>,
    /// What `/readyz` answers: whether to send the node traffic.
    pub ready: bool,
    /// Why not, when not: starting or stopping, a database in an I/O failure, damage
    /// found in the database, consensus stopped, fewer members reachable than a
    /// quorum, catching up with the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
}

/// The JSON body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// A stable machine-readable code.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
}

/// What identifies a plugin build: members must run the same set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Fingerprint {
    /// The name the plugin gives itself.
    pub name: String,
    /// Its version.
    pub version: String,
    /// SHA-256 of the library file, hex.
    pub sha256: String,
    /// The first 16 hex digits of the SHA-256 of its config, as the plugin's `init`
    /// gets it (JSON, keys sorted): members that run one library with different
    /// configs differ here. Absent where no config was read (`ledgerd plugins
    /// check`, a node before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.name, self.version, self.sha256)?;
        match &self.config_sha256 {
            Some(config) => write!(f, "+config:{config}"),
            None => Ok(()),
        }
    }
}

/// `POST /mine` answer: the block it produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MinedView {
    /// The new block's header.
    #[serde(flatten)]
    pub header: HeaderView,
}

/// `GET /v1/snapshots/latest` and `/v1/snapshots/{height}`: a snapshot's manifest
/// (docs/FORMAT.md, "Snapshot") with the figures a joiner plans its transfer by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotView {
    /// The height the snapshot is taken at.
    pub height: u64,
    /// Block `height`'s hash.
    pub block_hash: String,
    /// Entries in the log at that height.
    pub log_size: u64,
    /// Ids per chunk (the last one may hold fewer).
    pub tile_ids: u64,
    /// How many chunks: `GET /v1/snapshots/{height}/chunks/{i}` for i below it.
    pub chunks: u64,
    /// The binary manifest, hex. Check it before trusting any field above.
    pub manifest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_request_rules() {
        let text = SubmitRequest {
            data: Some("hi".into()),
            ..Default::default()
        };
        assert_eq!(text.into_entry().unwrap().data, b"hi");
        let binary = SubmitRequest {
            data_b64: Some("AAE=".into()),
            ..Default::default()
        };
        assert_eq!(binary.into_entry().unwrap().data, [0, 1]);
        let both = SubmitRequest {
            data: Some("a".into()),
            data_b64: Some("AA==".into()),
            ..Default::default()
        };
        assert!(both.into_entry().is_err());
        assert!(SubmitRequest::default().into_entry().is_err());
        let lonely = SubmitRequest {
            data: Some("a".into()),
            author: Some("00".repeat(32)),
            ..Default::default()
        };
        assert!(lonely.into_entry().unwrap_err().contains("together"));
        let entry = Entry::new(vec![0xff, 0xfe]);
        let request = SubmitRequest::from_entry(&entry);
        assert!(request.data.is_none());
        assert_eq!(request.into_entry().unwrap(), entry);
    }
}
