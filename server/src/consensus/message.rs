//! Signed PBFT messages, the certificates they carry, and their canonical encodings.
//!
//! Every message is signed by its sender over a digest that is domain-separated by
//! message kind and bound to the chain hash (docs/FORMAT.md, "Consensus messages").
//! A PRE-PREPARE is signed over (view, height, block hash) rather than the whole block,
//! so the signature can travel in a prepared certificate without the block; the block
//! hash covers the entries through the header's log root. A COMMIT is signed over
//! exactly [`commit_digest`], so commits aggregate into the [`CommitCertificate`] a
//! client checks offline.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::chain::codec::Reader;
use crate::chain::{
    commit_digest, Block, ChainError, CommitCertificate, Hash, Header, Members, Membership,
    HEADER_LEN,
};

const MESSAGE_VERSION: u8 = 1;
const PRE_PREPARE_DOMAIN: &[u8] = b"ledger/v1/pre-prepare";
const PREPARE_DOMAIN: &[u8] = b"ledger/v1/prepare";
const CHECKPOINT_DOMAIN: &[u8] = b"ledger/v1/checkpoint";
const VIEW_CHANGE_DOMAIN: &[u8] = b"ledger/v1/view-change";
const NEW_VIEW_DOMAIN: &[u8] = b"ledger/v1/new-view";

/// A member's position in the membership list (also its rotation slot as primary).
pub type MemberIndex = u16;

/// A member's signature, named by its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vote {
    /// The signer.
    pub member: MemberIndex,
    /// ed25519 signature over the digest the containing certificate defines.
    pub signature: [u8; 64],
}

/// What the primary of `view` signs to propose `hash` at `height`.
pub fn pre_prepare_digest(chain_hash: &Hash, view: u64, height: u64, hash: &Hash) -> Hash {
    Hash::digest_parts(&[
        PRE_PREPARE_DOMAIN,
        chain_hash.as_bytes(),
        &view.to_be_bytes(),
        &height.to_be_bytes(),
        hash.as_bytes(),
    ])
}

/// What a backup signs to prepare `hash` at `height` in `view`.
pub fn prepare_digest(chain_hash: &Hash, view: u64, height: u64, hash: &Hash) -> Hash {
    Hash::digest_parts(&[
        PREPARE_DOMAIN,
        chain_hash.as_bytes(),
        &view.to_be_bytes(),
        &height.to_be_bytes(),
        hash.as_bytes(),
    ])
}

/// What a member signs to say its block at `height` is `hash`.
pub fn checkpoint_digest(chain_hash: &Hash, height: u64, hash: &Hash) -> Hash {
    Hash::digest_parts(&[
        CHECKPOINT_DOMAIN,
        chain_hash.as_bytes(),
        &height.to_be_bytes(),
        hash.as_bytes(),
    ])
}

/// The message body of one PBFT step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The primary proposes `block` at its height (C&L §4.2).
    PrePrepare {
        /// The primary's view.
        view: u64,
        /// The proposed block; its height is the sequence number.
        block: Arc<Block>,
    },
    /// A backup accepted the pre-prepare of `hash` at `height` (C&L §4.2).
    Prepare {
        /// The view.
        view: u64,
        /// The sequence number.
        height: u64,
        /// The block hash.
        hash: Hash,
    },
    /// The sender holds a prepared certificate for `hash` at `height` (C&L §4.2).
    Commit {
        /// The view.
        view: u64,
        /// The sequence number.
        height: u64,
        /// The block hash.
        hash: Hash,
    },
    /// The sender applied `hash` at `height`, a multiple of the checkpoint interval
    /// (C&L §4.3).
    Checkpoint {
        /// The height.
        height: u64,
        /// The sender's block hash at that height.
        hash: Hash,
    },
    /// The sender moves to `new_view` (C&L §4.4).
    ViewChange(ViewChange),
    /// The primary of a view starts it (C&L §4.4).
    NewView(NewView),
}

/// A VIEW-CHANGE body: the sender's stable checkpoint and every prepared certificate
/// above it (the highest view's per height).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewChange {
    /// The view the sender moves to.
    pub new_view: u64,
    /// The sender's stable checkpoint.
    pub checkpoint: CheckpointCertificate,
    /// Prepared certificates above the checkpoint, by ascending height.
    pub prepared: Vec<PreparedCertificate>,
}

/// A NEW-VIEW body: the view changes it is computed from and the re-proposals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewView {
    /// The view it starts.
    pub view: u64,
    /// At least a quorum of signed VIEW-CHANGE messages for `view` from distinct members.
    pub view_changes: Vec<Message>,
    /// Re-proposed headers by ascending height, each with the new primary's
    /// pre-prepare signature for `view`.
    pub proposals: Vec<Proposal>,
}

/// One re-proposed block in a NEW-VIEW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The block's header (its hash names the block; replicas fetch bodies they lack).
    pub header: Header,
    /// The new primary's signature over [`pre_prepare_digest`].
    pub signature: [u8; 64],
}

/// A quorum's signatures over one checkpoint: the log up to `height` is final.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointCertificate {
    /// The checkpoint height.
    pub height: u64,
    /// The block hash at that height.
    pub hash: Hash,
    /// Signatures over [`checkpoint_digest`]; empty for the genesis checkpoint.
    pub votes: Vec<Vote>,
}

/// A pre-prepare and q − 1 matching prepares: `header` was prepared in `view`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedCertificate {
    /// The view it was prepared in.
    pub view: u64,
    /// The prepared block's header (its parent link is checked at view changes).
    pub header: Header,
    /// The primary's pre-prepare signature first, then the backups' prepares.
    pub votes: Vec<Vote>,
}

/// A signed message from one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender.
    pub from: MemberIndex,
    /// What it says.
    pub payload: Payload,
    /// The sender's signature over [`Message::digest`].
    pub signature: [u8; 64],
}

/// Why a message or certificate was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The sender or a signer is not a member.
    #[error("member {0} does not exist")]
    NotMember(MemberIndex),
    /// A signature does not verify.
    #[error("bad signature by member {0}")]
    BadSignature(MemberIndex),
    /// One member signed twice in one certificate.
    #[error("member {0} signed twice")]
    DuplicateSigner(MemberIndex),
    /// Fewer distinct signers than required.
    #[error("{found} signatures, {required} required")]
    TooFewSignatures {
        /// Distinct valid signers.
        found: usize,
        /// The threshold.
        required: usize,
    },
    /// A structural rule of the message is broken.
    #[error("{0}")]
    Structure(&'static str),
}

/// Who signs and what counts: the membership of one chain, as seen by a verifier.
#[derive(Clone, Debug)]
pub struct Verifier {
    /// The domain every digest is bound to: the chain hash, or in a later membership
    /// epoch the epoch's signing domain ([`Membership::signing_domain`]).
    pub domain: Hash,
    /// The height and hash of the block the membership's ordering starts above
    /// (genesis, or the last block of the epoch before): its checkpoint needs no
    /// signatures of this membership.
    base: (u64, Hash),
    keys: Vec<VerifyingKey>,
    node_ids: Vec<Hash>,
    /// Matching votes that make a certificate, q = ⌈(n + f + 1) / 2⌉ (unless a test
    /// breaks it).
    pub(crate) quorum: usize,
    memo: Option<SignatureMemo>,
    /// Curve verifications performed (memo hits excluded), shared by clones.
    checked: Arc<AtomicU64>,
}

/// Signatures already found valid, shared by verifiers that check the same messages.
///
/// Verification is a pure function of (key, digest, signature), so remembering a
/// success changes no outcome; it only saves the curve arithmetic when one signed
/// message is checked many times (every receiver in the simulator, every
/// retransmission). Failures are not remembered.
#[derive(Clone, Debug, Default)]
pub struct SignatureMemo(Arc<Mutex<HashSet<Hash>>>);

/// Entries a memo holds before it starts over (about 40 MB).
const MEMO_LIMIT: usize = 1 << 20;

impl SignatureMemo {
    fn key(member: MemberIndex, digest: &Hash, signature: &[u8; 64]) -> Hash {
        Hash::digest_parts(&[&member.to_be_bytes(), digest.as_bytes(), signature])
    }

    fn contains(&self, key: &Hash) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    fn insert(&self, key: Hash) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MEMO_LIMIT {
            known.clear();
        }
        known.insert(key);
    }
}

impl Verifier {
    /// A verifier for `members` of the chain `chain_hash`.
    pub fn new(chain_hash: Hash, genesis_hash: Hash, members: &Members) -> Verifier {
        Verifier {
            domain: chain_hash,
            base: (0, genesis_hash),
            keys: members.as_slice().iter().map(|m| m.public_key).collect(),
            node_ids: members.as_slice().iter().map(|m| m.node_id).collect(),
            quorum: members.quorum(),
            memo: None,
            checked: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The verifier for `membership` of the chain `chain_hash`, whose ordering starts
    /// above the block `base_hash` at `base_height` (the epoch's first checkpoint);
    /// it shares this one's memo and count of checked signatures.
    pub fn for_epoch(
        &self,
        chain_hash: &Hash,
        membership: &Membership,
        base_height: u64,
        base_hash: Hash,
    ) -> Verifier {
        let mut verifier = Verifier::new(
            membership.signing_domain(chain_hash),
            base_hash,
            &membership.members,
        );
        verifier.base = (base_height, base_hash);
        verifier.memo = self.memo.clone();
        verifier.checked = self.checked.clone();
        verifier
    }

    /// Signatures verified on the curve so far by this verifier and its clones (for
    /// metrics and the bench's share of time spent verifying).
    pub fn signatures_checked(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }

    /// Shares `memo` of verified signatures with other verifiers of the same chain.
    pub fn with_memo(mut self, memo: SignatureMemo) -> Verifier {
        self.memo = Some(memo);
        self
    }

    /// Matching votes that make a certificate.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// The number of members, n.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no members (never true for a valid chain).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Faults tolerated, f.
    pub fn max_faulty(&self) -> usize {
        (self.keys.len() - 1) / 3
    }

    /// The primary of `view`.
    pub fn primary(&self, view: u64) -> MemberIndex {
        // n is at most a u16's range (genesis caps the member count).
        (view % self.keys.len() as u64) as MemberIndex
    }

    /// The index of the member whose node id is `id`.
    pub fn index_of(&self, id: &Hash) -> Option<MemberIndex> {
        let index = self.node_ids.iter().position(|known| known == id)?;
        MemberIndex::try_from(index).ok()
    }

    /// The node id (SHA-256 of the key) of `member`.
    pub fn node_id(&self, member: MemberIndex) -> Option<Hash> {
        self.node_ids.get(usize::from(member)).copied()
    }

    /// Checks one signature by `member` over `digest`.
    pub fn check(
        &self,
        member: MemberIndex,
        digest: &Hash,
        signature: &[u8; 64],
    ) -> Result<(), Invalid> {
        let key = self
            .keys
            .get(usize::from(member))
            .ok_or(Invalid::NotMember(member))?;
        let memo_key = self
            .memo
            .as_ref()
            .map(|memo| (memo, SignatureMemo::key(member, digest, signature)));
        if let Some((memo, memo_key)) = &memo_key {
            if memo.contains(memo_key) {
                return Ok(());
            }
        }
        self.checked.fetch_add(1, Ordering::Relaxed);
        key.verify_strict(digest.as_bytes(), &Signature::from_bytes(signature))
            .map_err(|_| Invalid::BadSignature(member))?;
        if let Some((memo, memo_key)) = memo_key {
            memo.insert(memo_key);
        }
        Ok(())
    }

    /// Checks `votes` over `digest`: distinct members, valid signatures, at least
    /// `required` of them, none from `excluded`.
    fn check_votes(
        &self,
        votes: &[Vote],
        digest: &Hash,
        required: usize,
        excluded: Option<MemberIndex>,
    ) -> Result<(), Invalid> {
        let mut seen = HashSet::with_capacity(votes.len());
        for vote in votes {
            if Some(vote.member) == excluded {
                return Err(Invalid::Structure("the primary voted as a backup"));
            }
            if !seen.insert(vote.member) {
                return Err(Invalid::DuplicateSigner(vote.member));
            }
            self.check(vote.member, digest, &vote.signature)?;
        }
        if seen.len() < required {
            return Err(Invalid::TooFewSignatures {
                found: seen.len(),
                required,
            });
        }
        Ok(())
    }

    /// Checks a commit certificate for `hash` at `height`: a quorum of distinct members'
    /// COMMIT signatures (the same check as [`CommitCertificate::verify`], through
    /// this verifier's quorum and memo).
    pub fn check_commit(
        &self,
        certificate: &CommitCertificate,
        height: u64,
        hash: &Hash,
    ) -> Result<(), Invalid> {
        if certificate.height != height || certificate.block_hash != *hash {
            return Err(Invalid::Structure("the certificate is for another block"));
        }
        let digest = commit_digest(&self.domain, certificate.view, height, hash);
        let mut seen = HashSet::with_capacity(certificate.signatures.len());
        for signature in &certificate.signatures {
            let member = self
                .node_ids
                .iter()
                .position(|id| *id == signature.node_id)
                .ok_or(Invalid::Structure("a signer is not a member"))?;
            // The position fits: genesis caps the member count below u16::MAX.
            let member = member as MemberIndex;
            if !seen.insert(member) {
                return Err(Invalid::DuplicateSigner(member));
            }
            self.check(member, &digest, &signature.signature)?;
        }
        if seen.len() < self.quorum {
            return Err(Invalid::TooFewSignatures {
                found: seen.len(),
                required: self.quorum,
            });
        }
        Ok(())
    }

    /// Checks a stable checkpoint certificate (C&L §4.3).
    pub fn check_checkpoint(&self, certificate: &CheckpointCertificate) -> Result<(), Invalid> {
        let (base_height, base_hash) = self.base;
        if certificate.height == 0 {
            return if certificate.hash == base_hash && certificate.votes.is_empty() {
                Ok(())
            } else {
                Err(Invalid::Structure(
                    "the height-0 checkpoint is not this chain's genesis",
                ))
            };
        }
        // The epoch's first checkpoint is the last block of the epoch before, which
        // this node applied as committed: its votes, if any, are that epoch's.
        if certificate.height == base_height {
            return if certificate.hash == base_hash {
                Ok(())
            } else {
                Err(Invalid::Structure(
                    "the checkpoint at the epoch's start is not the block that ended the last",
                ))
            };
        }
        if certificate.height < base_height {
            return Err(Invalid::Structure("a checkpoint below this epoch's start"));
        }
        let digest = checkpoint_digest(&self.domain, certificate.height, &certificate.hash);
        self.check_votes(&certificate.votes, &digest, self.quorum, None)
    }

    /// Checks a prepared certificate: the view's primary pre-prepared and q − 1 distinct
    /// backups prepared the same block (C&L §4.2).
    pub fn check_prepared(&self, certificate: &PreparedCertificate) -> Result<(), Invalid> {
        let hash = certificate.header.hash();
        let height = certificate.header.height;
        let primary = self.primary(certificate.view);
        let (first, prepares) = certificate.votes.split_first().ok_or(Invalid::Structure(
            "a prepared certificate without a pre-prepare",
        ))?;
        if first.member != primary {
            return Err(Invalid::Structure(
                "the pre-prepare is not the view's primary's",
            ));
        }
        let digest = pre_prepare_digest(&self.domain, certificate.view, height, &hash);
        self.check(primary, &digest, &first.signature)?;
        let digest = prepare_digest(&self.domain, certificate.view, height, &hash);
        self.check_votes(prepares, &digest, self.quorum - 1, Some(primary))
    }

    /// Checks the sender's signature and everything the message carries: the
    /// certificates of a VIEW-CHANGE, the view changes and re-proposals of a NEW-VIEW.
    /// Whether the content is acceptable now is the replica's business.
    pub fn check_message(&self, message: &Message) -> Result<(), Invalid> {
        let digest = message.digest(&self.domain);
        self.check(message.from, &digest, &message.signature)?;
        match &message.payload {
            Payload::ViewChange(change) => self.check_view_change(change),
            Payload::NewView(new_view) => {
                if message.from != self.primary(new_view.view) {
                    return Err(Invalid::Structure("NEW-VIEW not from the view's primary"));
                }
                let mut senders = HashSet::new();
                for inner in &new_view.view_changes {
                    match &inner.payload {
                        Payload::ViewChange(change) if change.new_view == new_view.view => {}
                        _ => return Err(Invalid::Structure("NEW-VIEW carries a foreign message")),
                    }
                    if !senders.insert(inner.from) {
                        return Err(Invalid::DuplicateSigner(inner.from));
                    }
                    self.check_message(inner)?;
                }
                if senders.len() < self.quorum {
                    return Err(Invalid::TooFewSignatures {
                        found: senders.len(),
                        required: self.quorum,
                    });
                }
                for proposal in &new_view.proposals {
                    let header = &proposal.header;
                    let digest = pre_prepare_digest(
                        &self.domain,
                        new_view.view,
                        header.height,
                        &header.hash(),
                    );
                    self.check(message.from, &digest, &proposal.signature)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn check_view_change(&self, change: &ViewChange) -> Result<(), Invalid> {
        self.check_checkpoint(&change.checkpoint)?;
        let mut last = change.checkpoint.height;
        for certificate in &change.prepared {
            if certificate.header.height <= last {
                return Err(Invalid::Structure(
                    "prepared certificates not strictly above the checkpoint and ascending",
                ));
            }
            if certificate.view >= change.new_view {
                return Err(Invalid::Structure(
                    "a prepared certificate from a future view",
                ));
            }
            last = certificate.header.height;
            self.check_prepared(certificate)?;
        }
        Ok(())
    }
}

impl Message {
    /// Signs `payload` as `from` with `key`.
    pub fn sign(
        chain_hash: &Hash,
        from: MemberIndex,
        key: &SigningKey,
        payload: Payload,
    ) -> Message {
        let mut message = Message {
            from,
            payload,
            signature: [0; 64],
        };
        message.signature = key.sign(message.digest(chain_hash).as_bytes()).to_bytes();
        message
    }

    /// What the sender signs.
    pub fn digest(&self, chain_hash: &Hash) -> Hash {
        match &self.payload {
            Payload::PrePrepare { view, block } => {
                pre_prepare_digest(chain_hash, *view, block.header.height, &block.hash())
            }
            Payload::Prepare { view, height, hash } => {
                prepare_digest(chain_hash, *view, *height, hash)
            }
            Payload::Commit { view, height, hash } => {
                commit_digest(chain_hash, *view, *height, hash)
            }
            Payload::Checkpoint { height, hash } => checkpoint_digest(chain_hash, *height, hash),
            Payload::ViewChange(change) => {
                let mut body = Vec::new();
                write_view_change(&mut body, change);
                Hash::digest_parts(&[VIEW_CHANGE_DOMAIN, chain_hash.as_bytes(), &body])
            }
            Payload::NewView(new_view) => {
                let mut body = Vec::new();
                write_new_view(&mut body, new_view);
                Hash::digest_parts(&[NEW_VIEW_DOMAIN, chain_hash.as_bytes(), &body])
            }
        }
    }

    /// The message's kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self.payload {
            Payload::PrePrepare { .. } => "pre-prepare",
            Payload::Prepare { .. } => "prepare",
            Payload::Commit { .. } => "commit",
            Payload::Checkpoint { .. } => "checkpoint",
            Payload::ViewChange(_) => "view-change",
            Payload::NewView(_) => "new-view",
        }
    }

    /// The canonical encoding (docs/FORMAT.md, "Consensus messages").
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_message(&mut out, self);
        out
    }

    /// Decodes exactly one message.
    pub fn decode(bytes: &[u8]) -> Result<Message, ChainError> {
        let mut reader = Reader::new(bytes, "consensus message");
        let message = read_message(&mut reader, 0)?;
        reader.finish()?;
        Ok(message)
    }
}

impl CheckpointCertificate {
    /// The canonical encoding, as inside a VIEW-CHANGE.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_checkpoint(&mut out, self);
        out
    }

    /// Decodes exactly one certificate.
    pub fn decode(bytes: &[u8]) -> Result<CheckpointCertificate, ChainError> {
        let mut reader = Reader::new(bytes, "checkpoint certificate");
        let certificate = read_checkpoint(&mut reader)?;
        reader.finish()?;
        Ok(certificate)
    }
}

impl PreparedCertificate {
    /// The canonical encoding, as inside a VIEW-CHANGE and the consensus log.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_prepared(&mut out, self);
        out
    }

    /// Decodes exactly one certificate.
    pub fn decode(bytes: &[u8]) -> Result<PreparedCertificate, ChainError> {
        let mut reader = Reader::new(bytes, "prepared certificate");
        let certificate = read_prepared(&mut reader)?;
        reader.finish()?;
        Ok(certificate)
    }
}

const KIND_PRE_PREPARE: u8 = 1;
const KIND_PREPARE: u8 = 2;
const KIND_COMMIT: u8 = 3;
const KIND_CHECKPOINT: u8 = 4;
const KIND_VIEW_CHANGE: u8 = 5;
const KIND_NEW_VIEW: u8 = 6;

pub(super) fn write_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn write_votes(out: &mut Vec<u8>, votes: &[Vote]) {
    out.extend_from_slice(&u16::try_from(votes.len()).unwrap_or(u16::MAX).to_be_bytes());
    for vote in votes.iter().take(usize::from(u16::MAX)) {
        out.extend_from_slice(&vote.member.to_be_bytes());
        out.extend_from_slice(&vote.signature);
    }
}

pub(super) fn write_checkpoint(out: &mut Vec<u8>, certificate: &CheckpointCertificate) {
    out.extend_from_slice(&certificate.height.to_be_bytes());
    out.extend_from_slice(certificate.hash.as_bytes());
    write_votes(out, &certificate.votes);
}

pub(super) fn write_prepared(out: &mut Vec<u8>, certificate: &PreparedCertificate) {
    out.extend_from_slice(&certificate.view.to_be_bytes());
    out.extend_from_slice(&certificate.header.encode());
    write_votes(out, &certificate.votes);
}

fn write_view_change(out: &mut Vec<u8>, change: &ViewChange) {
    out.extend_from_slice(&change.new_view.to_be_bytes());
    write_checkpoint(out, &change.checkpoint);
    write_len(out, change.prepared.len());
    for certificate in &change.prepared {
        write_prepared(out, certificate);
    }
}

fn write_new_view(out: &mut Vec<u8>, new_view: &NewView) {
    out.extend_from_slice(&new_view.view.to_be_bytes());
    write_len(out, new_view.view_changes.len());
    for message in &new_view.view_changes {
        write_message(out, message);
    }
    write_len(out, new_view.proposals.len());
    for proposal in &new_view.proposals {
        out.extend_from_slice(&proposal.header.encode());
        out.extend_from_slice(&proposal.signature);
    }
}

fn write_message(out: &mut Vec<u8>, message: &Message) {
    out.push(MESSAGE_VERSION);
    out.extend_from_slice(&message.from.to_be_bytes());
    match &message.payload {
        Payload::PrePrepare { view, block } => {
            out.push(KIND_PRE_PREPARE);
            out.extend_from_slice(&view.to_be_bytes());
            let encoded = block.encode();
            write_len(out, encoded.len());
            out.extend_from_slice(&encoded);
        }
        Payload::Prepare { view, height, hash } | Payload::Commit { view, height, hash } => {
            let kind = if matches!(message.payload, Payload::Prepare { .. }) {
                KIND_PREPARE
            } else {
                KIND_COMMIT
            };
            out.push(kind);
            out.extend_from_slice(&view.to_be_bytes());
            out.extend_from_slice(&height.to_be_bytes());
            out.extend_from_slice(hash.as_bytes());
        }
        Payload::Checkpoint { height, hash } => {
            out.push(KIND_CHECKPOINT);
            out.extend_from_slice(&height.to_be_bytes());
            out.extend_from_slice(hash.as_bytes());
        }
        Payload::ViewChange(change) => {
            out.push(KIND_VIEW_CHANGE);
            write_view_change(out, change);
        }
        Payload::NewView(new_view) => {
            out.push(KIND_NEW_VIEW);
            write_new_view(out, new_view);
        }
    }
    out.extend_from_slice(&message.signature);
}

/// A count read from the wire, refused when even minimal items could not fit.
pub(super) fn read_count(
    reader: &mut Reader<'_>,
    wide: bool,
    min_item: usize,
) -> Result<usize, ChainError> {
    let count = if wide {
        usize::try_from(reader.u32()?).unwrap_or(usize::MAX)
    } else {
        usize::from(reader.u16()?)
    };
    if count > reader.remaining() / min_item.max(1) {
        return Err(ChainError::Malformed {
            what: "consensus message",
            reason: "count exceeds the encoded size",
        });
    }
    Ok(count)
}

fn read_votes(reader: &mut Reader<'_>) -> Result<Vec<Vote>, ChainError> {
    let count = read_count(reader, false, 66)?;
    (0..count)
        .map(|_| {
            Ok(Vote {
                member: reader.u16()?,
                signature: reader.array()?,
            })
        })
        .collect()
}

pub(super) fn read_checkpoint(
    reader: &mut Reader<'_>,
) -> Result<CheckpointCertificate, ChainError> {
    Ok(CheckpointCertificate {
        height: reader.u64()?,
        hash: reader.hash()?,
        votes: read_votes(reader)?,
    })
}

pub(super) fn read_prepared(reader: &mut Reader<'_>) -> Result<PreparedCertificate, ChainError> {
    Ok(PreparedCertificate {
        view: reader.u64()?,
        header: Header::read(reader)?,
        votes: read_votes(reader)?,
    })
}

fn read_view_change(reader: &mut Reader<'_>) -> Result<ViewChange, ChainError> {
    let new_view = reader.u64()?;
    let checkpoint = read_checkpoint(reader)?;
    let count = read_count(reader, true, 8 + HEADER_LEN + 2)?;
    let prepared = (0..count)
        .map(|_| read_prepared(reader))
        .collect::<Result<_, _>>()?;
    Ok(ViewChange {
        new_view,
        checkpoint,
        prepared,
    })
}

/// A NEW-VIEW nests VIEW-CHANGEs, which nest nothing; deeper nesting is refused.
const MAX_NESTING: u8 = 1;

fn read_message(reader: &mut Reader<'_>, depth: u8) -> Result<Message, ChainError> {
    let version = reader.u8()?;
    if version != MESSAGE_VERSION {
        return Err(ChainError::UnsupportedVersion {
            what: "consensus message",
            version: version.into(),
        });
    }
    let from = reader.u16()?;
    let kind = reader.u8()?;
    let payload = match kind {
        KIND_PRE_PREPARE => {
            let view = reader.u64()?;
            let len = read_count(reader, true, 1)?;
            let block = Block::decode(reader.take(len)?)?;
            Payload::PrePrepare {
                view,
                block: Arc::new(block),
            }
        }
        KIND_PREPARE => Payload::Prepare {
            view: reader.u64()?,
            height: reader.u64()?,
            hash: reader.hash()?,
        },
        KIND_COMMIT => Payload::Commit {
            view: reader.u64()?,
            height: reader.u64()?,
            hash: reader.hash()?,
        },
        KIND_CHECKPOINT => Payload::Checkpoint {
            height: reader.u64()?,
            hash: reader.hash()?,
        },
        KIND_VIEW_CHANGE => Payload::ViewChange(read_view_change(reader)?),
        KIND_NEW_VIEW if depth < MAX_NESTING => {
            let view = reader.u64()?;
            let count = read_count(reader, true, 4 + 64)?;
            let view_changes = (0..count)
                .map(|_| read_message(reader, depth + 1))
                .collect::<Result<_, _>>()?;
            let count = read_count(reader, true, HEADER_LEN + 64)?;
            let proposals = (0..count)
                .map(|_| {
                    Ok(Proposal {
                        header: Header::read(reader)?,
                        signature: reader.array()?,
                    })
                })
                .collect::<Result<_, ChainError>>()?;
            Payload::NewView(NewView {
                view,
                view_changes,
                proposals,
            })
        }
        _ => {
            return Err(ChainError::Malformed {
                what: "consensus message",
                reason: "unknown or misplaced message kind",
            })
        }
    };
    Ok(Message {
        from,
        payload,
        signature: reader.array()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::harness::*;

    /// Every message kind survives its canonical encoding; damaged bytes are refused.
    #[test]
    fn messages_round_trip_and_refuse_damage() {
        let setup = Setup::new(4);
        let genesis = setup.genesis();
        let block = setup.block(&genesis.header, &genesis.log, 1);
        let messages = [
            setup.pre_prepare(0, &block),
            vote(&setup, 1, false, 0, &block),
            vote(&setup, 1, true, 0, &block),
            setup.sign(
                1,
                Payload::Checkpoint {
                    height: 2,
                    hash: block.hash(),
                },
            ),
            setup.sign(
                1,
                Payload::ViewChange(crate::consensus::ViewChange {
                    new_view: 1,
                    checkpoint: other_checkpoint(&setup),
                    prepared: Vec::new(),
                }),
            ),
        ];
        for original in messages {
            let bytes = original.encode();
            assert_eq!(Message::decode(&bytes).expect("decodes"), original);
            assert!(Message::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Message::decode(&longer).is_err());
        }
        assert!(Message::decode(&[1, 0, 0, 99]).is_err());
    }
}
