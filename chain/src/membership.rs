//! Membership changes (DESIGN.md, "Membership"): reconfiguration entries signed by the
//! genesis admins, and the membership they lead to, block by block.
//!
//! Everything here is a function of the chain: every replica that applies the same
//! blocks reaches the same [`Membership`] at every height. A change recorded in the
//! block at height `b` is in force from the block after the first checkpoint at or
//! above `b` (`⌈b / K⌉·K + 1`), so where an epoch starts is known from the block that
//! holds its change, not from when some replica saw a checkpoint become stable.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::codec::Reader;
use super::genesis::{chain_key, Admins, MAX_MEMBERS};
use super::{ChainError, ChainSpec, Entry, Hash, Member, Members};

const RECONFIGURATION_VERSION: u8 = 1;
/// Domain separator of admin signatures; never reused for another message kind.
const SIGNATURE_DOMAIN: &[u8] = b"ledger/v1/reconfiguration";
const EPOCH_DOMAIN: &[u8] = b"ledger/v1/epoch";
/// Domain separator of a learner's signed progress.
const PROGRESS_DOMAIN: &[u8] = b"ledger/v1/learner-progress";
/// Bytes of an encoded [`LearnerProgress`].
const PROGRESS_LEN: usize = 8 + 64;
/// Longest address hint, bytes.
pub const MAX_ADDR_BYTES: usize = 255;
const KIND_ADD_LEARNER: u8 = 1;
const KIND_PROMOTE: u8 = 2;
const KIND_REMOVE: u8 = 3;

/// One change to the membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node that receives and checks blocks but does not vote.
    AddLearner {
        /// Its ed25519 key.
        public_key: VerifyingKey,
        /// Where members dial it once it votes.
        p2p_addr: String,
        /// Where clients reach it.
        api_addr: Option<String>,
    },
    /// A learner becomes a voting member, last in the primary rotation.
    Promote {
        /// The learner's key.
        public_key: VerifyingKey,
    },
    /// A member or a learner leaves.
    Remove {
        /// Its key.
        public_key: VerifyingKey,
    },
}

impl Change {
    /// The key the change is about.
    pub fn public_key(&self) -> &VerifyingKey {
        match self {
            Change::AddLearner { public_key, .. }
            | Change::Promote { public_key }
            | Change::Remove { public_key } => public_key,
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let (kind, key) = match self {
            Change::AddLearner { public_key, .. } => (KIND_ADD_LEARNER, public_key),
            Change::Promote { public_key } => (KIND_PROMOTE, public_key),
            Change::Remove { public_key } => (KIND_REMOVE, public_key),
        };
        out.push(kind);
        out.extend_from_slice(key.as_bytes());
        if let Change::AddLearner {
            p2p_addr, api_addr, ..
        } = self
        {
            for addr in [Some(p2p_addr), api_addr.as_ref()] {
                // check_addr bounds each address to 255 bytes.
                let addr = addr.map_or(&[][..], |addr| addr.as_bytes());
                out.push(addr.len() as u8);
                out.extend_from_slice(addr);
            }
        }
    }

    fn read(reader: &mut Reader<'_>) -> Result<Change, ChainError> {
        let kind = reader.u8()?;
        let public_key = chain_key("reconfiguration", reader.array()?)?;
        match kind {
            KIND_ADD_LEARNER => {
                let mut addr = || -> Result<String, ChainError> {
                    let len = usize::from(reader.u8()?);
                    String::from_utf8(reader.take(len)?.to_vec()).map_err(|_| {
                        ChainError::Malformed {
                            what: "reconfiguration",
                            reason: "an address is not UTF-8",
                        }
                    })
                };
                let p2p_addr = addr()?;
                let api_addr = Some(addr()?).filter(|addr| !addr.is_empty());
                let change = Change::AddLearner {
                    public_key,
                    p2p_addr,
                    api_addr,
                };
                change.check_addrs()?;
                Ok(change)
            }
            KIND_PROMOTE => Ok(Change::Promote { public_key }),
            KIND_REMOVE => Ok(Change::Remove { public_key }),
            _ => Err(ChainError::Malformed {
                what: "reconfiguration",
                reason: "unknown kind of change",
            }),
        }
    }

    /// The first of a learner's addresses that no node could dial
    /// ([`address_problem`]): which (`p2p` or `api`), the address, and why.
    pub fn undialable(&self) -> Option<(&'static str, &str, &'static str)> {
        let Change::AddLearner {
            p2p_addr, api_addr, ..
        } = self
        else {
            return None;
        };
        [("p2p", Some(p2p_addr)), ("api", api_addr.as_ref())]
            .into_iter()
            .find_map(|(kind, addr)| {
                let addr = addr?;
                address_problem(addr).map(|problem| (kind, addr.as_str(), problem))
            })
    }

    /// Address hints must be printable and fit their length byte; a learner needs a
    /// p2p address (members dial it once it votes).
    fn check_addrs(&self) -> Result<(), ChainError> {
        let Change::AddLearner {
            p2p_addr, api_addr, ..
        } = self
        else {
            return Ok(());
        };
        let bad = |addr: &String| {
            addr.is_empty() || addr.len() > MAX_ADDR_BYTES || addr.chars().any(char::is_control)
        };
        if bad(p2p_addr) || api_addr.as_ref().is_some_and(bad) {
            return Err(ChainError::Malformed {
                what: "reconfiguration",
                reason: "a learner's addresses must be 1 to 255 bytes without control \
                         characters, and its p2p address is required",
            });
        }
        Ok(())
    }
}

/// Why `addr` is no `HOST:PORT` a node can be dialed at (`[v6]:PORT` too), if it
/// is not: what a node checks of the addresses in a change it is asked to order. Not
/// a chain rule: a block holding an address that fails it stays valid.
pub fn address_problem(addr: &str) -> Option<&'static str> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Some("not HOST:PORT");
    };
    if !matches!(port.parse::<u16>(), Ok(1..)) {
        return Some("its port is not a number from 1 to 65535");
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    let ip: Option<std::net::IpAddr> = match bracketed {
        true => match host[1..host.len() - 1].parse::<std::net::Ipv6Addr>() {
            Ok(v6) => Some(v6.into()),
            Err(_) => return Some(BAD_HOST),
        },
        // Digits and dots only: an IPv4 address, which must parse as one.
        false if !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.') => {
            match host.parse::<std::net::Ipv4Addr>() {
                Ok(v4) => Some(v4.into()),
                Err(_) => return Some(BAD_HOST),
            }
        }
        false => {
            let name = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !name {
                return Some(BAD_HOST);
            }
            None
        }
    };
    ip.filter(|ip| ip.is_unspecified())
        .map(|_| "its host is a wildcard (0.0.0.0, [::]), which no node can dial")
}

/// What [`address_problem`] says of a host that is no name or address.
const BAD_HOST: &str = "its host is no name or address (an IPv6 address goes in [brackets])";

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = hex::encode(self.public_key().as_bytes());
        match self {
            Change::AddLearner { p2p_addr, .. } => write!(f, "add learner {key} at {p2p_addr}"),
            Change::Promote { .. } => write!(f, "promote learner {key}"),
            Change::Remove { .. } => write!(f, "remove {key}"),
        }
    }
}

/// One admin's signature over a reconfiguration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminSignature {
    /// The admin's key (one of the genesis `admins`).
    pub public_key: [u8; 32],
    /// Over [`Reconfiguration::digest`].
    pub signature: [u8; 64],
}

/// A learner's signed word of how far it has applied the chain. A promotion carries
/// one, so every replica refuses alike a promotion of a learner that is behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnerProgress {
    /// The height of the last block the learner applied.
    pub height: u64,
    /// The learner's signature over [`LearnerProgress::digest`].
    pub signature: [u8; 64],
}

impl LearnerProgress {
    /// What the learner signs: SHA-256(domain ‖ chain hash ‖ u64 height).
    pub fn digest(chain_hash: &Hash, height: u64) -> Hash {
        Hash::digest_parts(&[
            PROGRESS_DOMAIN,
            chain_hash.as_bytes(),
            &height.to_be_bytes(),
        ])
    }

    /// `key`'s word that it has applied the chain `chain_hash` up to `height`.
    pub fn sign(key: &SigningKey, chain_hash: &Hash, height: u64) -> LearnerProgress {
        let digest = LearnerProgress::digest(chain_hash, height);
        LearnerProgress {
            height,
            signature: key.sign(digest.as_bytes()).to_bytes(),
        }
    }

    /// Whether `key` signed this progress for the chain `chain_hash`.
    pub fn verify(&self, key: &VerifyingKey, chain_hash: &Hash) -> bool {
        let digest = LearnerProgress::digest(chain_hash, self.height);
        key.verify_strict(digest.as_bytes(), &Signature::from_bytes(&self.signature))
            .is_ok()
    }
}

/// A change, the epoch it applies to, and the admins' signatures: the data of a
/// reconfiguration entry (docs/FORMAT.md, "Reconfiguration").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconfiguration {
    /// The epoch in force when the change is ordered; it is refused in any other, so
    /// a signed change cannot be replayed later.
    pub epoch: u64,
    /// What changes.
    pub change: Change,
    /// At least the genesis threshold of distinct admins.
    pub signatures: Vec<AdminSignature>,
    /// A promotion's learner progress, attached by the member that submits it for
    /// ordering (the admins sign the change long before): outside the admins'
    /// digest, and required of a promotion only.
    pub progress: Option<LearnerProgress>,
}

impl Reconfiguration {
    /// A change for `epoch`, signed by nobody yet.
    pub fn new(epoch: u64, change: Change) -> Result<Reconfiguration, ChainError> {
        change.check_addrs()?;
        Ok(Reconfiguration {
            epoch,
            change,
            signatures: Vec::new(),
            progress: None,
        })
    }

    /// What each admin signs: SHA-256(domain ‖ chain hash ‖ u64 epoch ‖ change).
    pub fn digest(&self, chain_hash: &Hash) -> Hash {
        let mut change = Vec::new();
        self.change.encode_into(&mut change);
        Hash::digest_parts(&[
            SIGNATURE_DOMAIN,
            chain_hash.as_bytes(),
            &self.epoch.to_be_bytes(),
            &change,
        ])
    }

    /// Adds `key`'s signature for the chain `chain_hash`, replacing an earlier one
    /// of the same key.
    pub fn sign(&mut self, key: &SigningKey, chain_hash: &Hash) {
        let signature = key.sign(self.digest(chain_hash).as_bytes()).to_bytes();
        let public_key = key.verifying_key().to_bytes();
        self.signatures.retain(|s| s.public_key != public_key);
        self.signatures.push(AdminSignature {
            public_key,
            signature,
        });
    }

    /// Checks one signature over `digest` ([`Reconfiguration::digest`]): by an admin,
    /// and valid.
    pub fn check_signature(
        digest: &Hash,
        admins: &Admins,
        signature: &AdminSignature,
    ) -> Result<(), MembershipError> {
        let signer = || hex::encode(signature.public_key);
        let key = admins
            .keys()
            .iter()
            .find(|admin| admin.to_bytes() == signature.public_key)
            .ok_or_else(|| MembershipError::NotAdmin(signer()))?;
        key.verify_strict(
            digest.as_bytes(),
            &Signature::from_bytes(&signature.signature),
        )
        .map_err(|_| MembershipError::BadSignature(signer()))
    }

    /// Checks that at least the threshold of distinct admins signed this change.
    pub fn check_signatures(
        &self,
        chain_hash: &Hash,
        admins: &Admins,
    ) -> Result<(), MembershipError> {
        let digest = self.digest(chain_hash);
        let mut signed: Vec<[u8; 32]> = Vec::with_capacity(self.signatures.len());
        for signature in &self.signatures {
            if signed.contains(&signature.public_key) {
                return Err(MembershipError::SignedTwice(hex::encode(
                    signature.public_key,
                )));
            }
            Reconfiguration::check_signature(&digest, admins, signature)?;
            signed.push(signature.public_key);
        }
        if signed.len() < admins.threshold() {
            return Err(MembershipError::TooFewSignatures {
                signed: signed.len(),
                threshold: admins.threshold(),
            });
        }
        Ok(())
    }

    /// The canonical encoding, a reconfiguration entry's data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + 96 * self.signatures.len());
        out.push(RECONFIGURATION_VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        self.change.encode_into(&mut out);
        // Decoding refuses more than u16::MAX; more would not verify anyway (at most
        // 256 admins sign).
        out.extend_from_slice(
            &(self.signatures.len().min(usize::from(u16::MAX)) as u16).to_be_bytes(),
        );
        for signature in self.signatures.iter().take(usize::from(u16::MAX)) {
            out.extend_from_slice(&signature.public_key);
            out.extend_from_slice(&signature.signature);
        }
        if let Some(progress) = &self.progress {
            out.extend_from_slice(&progress.height.to_be_bytes());
            out.extend_from_slice(&progress.signature);
        }
        out
    }

    /// Decodes exactly one reconfiguration.
    pub fn decode(bytes: &[u8]) -> Result<Reconfiguration, ChainError> {
        let mut reader = Reader::new(bytes, "reconfiguration");
        let version = reader.u8()?;
        if version != RECONFIGURATION_VERSION {
            return Err(ChainError::UnsupportedVersion {
                what: "reconfiguration",
                version: version.into(),
            });
        }
        let epoch = reader.u64()?;
        let change = Change::read(&mut reader)?;
        let count = usize::from(reader.u16()?);
        if count * 96 > reader.remaining() {
            return Err(ChainError::Malformed {
                what: "reconfiguration",
                reason: "more signatures than bytes",
            });
        }
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            signatures.push(AdminSignature {
                public_key: reader.array()?,
                signature: reader.array()?,
            });
        }
        let progress = match reader.remaining() {
            0 => None,
            PROGRESS_LEN => Some(LearnerProgress {
                height: reader.u64()?,
                signature: reader.array()?,
            }),
            _ => {
                return Err(ChainError::Malformed {
                    what: "reconfiguration",
                    reason: "bytes after the signatures are no learner progress",
                })
            }
        };
        reader.finish()?;
        Ok(Reconfiguration {
            epoch,
            change,
            signatures,
            progress,
        })
    }

    /// The entry that carries this change into a block.
    pub fn to_entry(&self) -> Entry {
        Entry::reconfiguration(self.encode())
    }
}

/// The signing domain of membership epoch `epoch` ([`Membership::signing_domain`]).
pub fn epoch_domain(chain_hash: &Hash, epoch: u64) -> Hash {
    if epoch == 0 {
        return *chain_hash;
    }
    Hash::digest_parts(&[EPOCH_DOMAIN, chain_hash.as_bytes(), &epoch.to_be_bytes()])
}

/// Why a reconfiguration is refused: before it is ordered, and in a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The genesis file names no admins.
    #[error("this chain has no admins: its membership is fixed at genesis")]
    NoAdmins,
    /// Signed for another epoch than the one in force.
    #[error(
        "the change is signed for epoch {signed_for}, but epoch {current} is in force; sign \
         it again for epoch {current}"
    )]
    WrongEpoch {
        /// The epoch the admins signed.
        signed_for: u64,
        /// The epoch in force at the block's height.
        current: u64,
    },
    /// One change at a time.
    #[error(
        "another change ({change}, ordered at height {height}) is in flight until height \
         {in_force_from}; submit this one, signed for epoch {next}, once it is in force"
    )]
    InFlight {
        /// The change on its way.
        change: String,
        /// The block that holds it.
        height: u64,
        /// Where it takes effect.
        in_force_from: u64,
        /// The epoch it starts.
        next: u64,
    },
    /// A signature by a key that is not a genesis admin.
    #[error("signer {0} is not an admin of this chain")]
    NotAdmin(String),
    /// One admin counted twice.
    #[error("admin {0} signed twice")]
    SignedTwice(String),
    /// A signature that does not verify.
    #[error("the signature of admin {0} does not verify for this change, chain and epoch")]
    BadSignature(String),
    /// Fewer than the threshold.
    #[error("{signed} admin signatures, the chain needs {threshold}")]
    TooFewSignatures {
        /// Valid distinct signatures.
        signed: usize,
        /// The genesis threshold.
        threshold: usize,
    },
    /// Adding a node that is already a member or a learner.
    #[error("{0} is already a {1}")]
    AlreadyPresent(String, &'static str),
    /// Promoting a key that is not a learner.
    #[error("{0} is not a learner; add it as a learner first")]
    NotALearner(String),
    /// Removing a key that is neither member nor learner.
    #[error("{0} is neither a member nor a learner")]
    NotPresent(String),
    /// Removing the last member.
    #[error("removing the last member would leave nobody to order blocks")]
    LastMember,
    /// More members and learners than a chain takes.
    #[error("a chain takes at most {0} members and learners")]
    TooMany(usize),
    /// A replica configured not to order membership changes (one whose driver
    /// cannot switch epochs) refuses a block holding one.
    #[error("this replica orders no membership changes")]
    NotOrdered,
    /// A block at a height another epoch orders than the replica's.
    #[error(
        "block {height} is ordered by membership epoch {in_force}, not by epoch {ordering} \
         (its change is in force from there)"
    )]
    OtherEpoch {
        /// The block's height.
        height: u64,
        /// The epoch in force at that height on the block's chain.
        in_force: u64,
        /// The epoch the replica orders.
        ordering: u64,
    },
    /// Two changes in one block.
    #[error("a block holds at most one reconfiguration")]
    TwoInOneBlock,
    /// A promotion without the learner's progress.
    #[error(
        "a promotion carries the learner's signed progress, which the member it is \
         submitted to asks the learner for"
    )]
    NoProgress,
    /// Progress on a change other than a promotion.
    #[error("only a promotion carries a learner's progress")]
    UnexpectedProgress,
    /// Progress the learner did not sign, or claiming a height the chain has not
    /// reached.
    #[error(
        "the learner's progress (height {0}) is not signed by the learner or is above the chain"
    )]
    BadProgress(u64),
    /// Promoting a learner more than a checkpoint interval behind.
    #[error(
        "the learner is at height {height} and the chain at {tip}: it may be promoted once \
         it is within one checkpoint interval ({interval} blocks); wait for it to catch up"
    )]
    LearnerBehind {
        /// The learner's signed height.
        height: u64,
        /// The tip below the block that would hold the promotion.
        tip: u64,
        /// The chain's checkpoint interval.
        interval: u64,
    },
}

/// A change ordered but not yet in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// What changes.
    pub change: Change,
    /// The block that holds it.
    pub height: u64,
    /// The first height ordered by the membership after the change.
    pub in_force_from: u64,
}

/// Who orders the blocks from some height on, and who follows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// How many changes are in force (0 at genesis).
    pub epoch: u64,
    /// The first height this membership orders and certifies.
    pub since: u64,
    /// The voting members, in primary rotation order.
    pub members: Members,
    /// Nodes that receive blocks but do not vote.
    pub learners: Vec<Member>,
    /// A change ordered and not yet in force.
    pub pending: Option<Pending>,
}

const MEMBERSHIP_VERSION: u8 = 1;

fn write_member(out: &mut Vec<u8>, member: &Member) {
    out.extend_from_slice(member.public_key.as_bytes());
    for addr in [&member.p2p_addr, &member.api_addr] {
        // Longer hints (only a genesis file could hold one) are not kept.
        let addr = addr
            .as_deref()
            .filter(|addr| addr.len() <= usize::from(u16::MAX))
            .unwrap_or_default();
        out.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        out.extend_from_slice(addr.as_bytes());
    }
}

fn read_member(reader: &mut Reader<'_>) -> Result<Member, ChainError> {
    let public_key = chain_key("member", reader.array()?)?;
    let mut addr = || -> Result<Option<String>, ChainError> {
        let len = usize::from(reader.u16()?);
        let text =
            String::from_utf8(reader.take(len)?.to_vec()).map_err(|_| ChainError::Malformed {
                what: "membership",
                reason: "an address is not UTF-8",
            })?;
        Ok(Some(text).filter(|text| !text.is_empty()))
    };
    Ok(Member {
        public_key,
        node_id: Hash::digest(public_key.as_bytes()),
        p2p_addr: addr()?,
        api_addr: addr()?,
    })
}

fn read_members(reader: &mut Reader<'_>) -> Result<Vec<Member>, ChainError> {
    let count = usize::from(reader.u16()?);
    if count > MAX_MEMBERS || count * 36 > reader.remaining() {
        return Err(ChainError::Malformed {
            what: "membership",
            reason: "more members than a chain takes or than bytes",
        });
    }
    (0..count).map(|_| read_member(reader)).collect()
}

impl Membership {
    /// The encoding a node keeps (docs/FORMAT.md, "Membership"): addresses included,
    /// as they are hints a node needs to reach the others.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 80 * (self.members.len() + self.learners.len()));
        out.push(MEMBERSHIP_VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.since.to_be_bytes());
        // Members::new and check() bound both lists by MAX_MEMBERS.
        for list in [self.members.as_slice(), &self.learners] {
            out.extend_from_slice(&(list.len() as u16).to_be_bytes());
            for member in list {
                write_member(&mut out, member);
            }
        }
        match &self.pending {
            None => out.push(0),
            Some(pending) => {
                out.push(1);
                pending.change.encode_into(&mut out);
                out.extend_from_slice(&pending.height.to_be_bytes());
                out.extend_from_slice(&pending.in_force_from.to_be_bytes());
            }
        }
        out
    }

    /// Decodes what [`Membership::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Membership, ChainError> {
        let mut reader = Reader::new(bytes, "membership");
        let version = reader.u8()?;
        if version != MEMBERSHIP_VERSION {
            return Err(ChainError::UnsupportedVersion {
                what: "membership",
                version: version.into(),
            });
        }
        let epoch = reader.u64()?;
        let since = reader.u64()?;
        let members = Members::new(read_members(&mut reader)?)?;
        let learners = read_members(&mut reader)?;
        let pending = match reader.u8()? {
            0 => None,
            1 => Some(Pending {
                change: Change::read(&mut reader)?,
                height: reader.u64()?,
                in_force_from: reader.u64()?,
            }),
            _ => {
                return Err(ChainError::Malformed {
                    what: "membership",
                    reason: "bad pending flag",
                })
            }
        };
        reader.finish()?;
        Ok(Membership {
            epoch,
            since,
            members,
            learners,
            pending,
        })
    }

    /// What this membership's members sign their consensus messages and commit
    /// certificates under: the chain hash in epoch 0 (so chains from before
    /// reconfiguration keep their certificates), and SHA-256(domain ‖ chain hash ‖
    /// u64 epoch) after, so that nothing signed in one epoch counts in another.
    pub fn signing_domain(&self, chain_hash: &Hash) -> Hash {
        epoch_domain(chain_hash, self.epoch)
    }

    /// Checks that `certificate` is this membership's commit certificate of block
    /// `block_hash` at `height` on the chain `chain_hash`, signed in its epoch's
    /// domain.
    pub fn verify_certificate(
        &self,
        chain_hash: &Hash,
        certificate: &super::CommitCertificate,
        height: u64,
        block_hash: &Hash,
    ) -> Result<(), ChainError> {
        let domain = self.signing_domain(chain_hash);
        certificate.verify(&domain, &self.members, height, block_hash)
    }

    /// The membership of the genesis file.
    pub fn genesis(spec: &ChainSpec) -> Membership {
        Membership {
            epoch: 0,
            since: 1,
            members: spec.members.clone(),
            learners: Vec::new(),
            pending: None,
        }
    }

    /// The height from which a change held by the block at `height` is in force: the
    /// one after the first checkpoint at or above it.
    pub fn in_force_from(height: u64, checkpoint_interval: u64) -> u64 {
        // Saturating: a checkpoint interval near u64::MAX puts the change at the end
        // of time rather than wrapping it to the start.
        height
            .div_ceil(checkpoint_interval.max(1))
            .saturating_mul(checkpoint_interval.max(1))
            .saturating_add(1)
    }

    /// Whether `other` orders and follows the same way: the same epoch, first height,
    /// member and learner keys in order, and change on its way. Address hints, which
    /// an operator may edit in the genesis file, do not count.
    pub fn same_order(&self, other: &Membership) -> bool {
        let keys = |members: &[Member]| -> Vec<[u8; 32]> {
            members.iter().map(|m| m.public_key.to_bytes()).collect()
        };
        self.epoch == other.epoch
            && self.since == other.since
            && keys(self.members.as_slice()) == keys(other.members.as_slice())
            && keys(&self.learners) == keys(&other.learners)
            && self.pending == other.pending
    }

    /// An epoch's membership as it stood for the block at `height` (its latest state
    /// is kept): a change recorded at or above `height` was not known when that block
    /// was ordered, and one due by then is in force.
    pub fn as_of(mut self, height: u64) -> Membership {
        if self
            .pending
            .as_ref()
            .is_some_and(|pending| pending.height >= height)
        {
            self.pending = None;
        }
        self.advance_to(height);
        self
    }

    /// Puts a pending change in force if the block at `height` is the first it orders.
    /// Returns whether the membership changed.
    pub fn advance_to(&mut self, height: u64) -> bool {
        let due = self
            .pending
            .as_ref()
            .is_some_and(|pending| height >= pending.in_force_from);
        if !due {
            return false;
        }
        let Some(pending) = self.pending.take() else {
            return false;
        };
        let mut members = self.members.as_slice().to_vec();
        let key = *pending.change.public_key();
        match pending.change {
            Change::AddLearner {
                public_key,
                p2p_addr,
                api_addr,
            } => self.learners.push(Member {
                public_key,
                node_id: Hash::digest(public_key.as_bytes()),
                p2p_addr: Some(p2p_addr),
                api_addr,
            }),
            Change::Promote { .. } => {
                if let Some(at) = self.learners.iter().position(|l| l.public_key == key) {
                    members.push(self.learners.remove(at));
                }
            }
            Change::Remove { .. } => {
                members.retain(|m| m.public_key != key);
                self.learners.retain(|l| l.public_key != key);
            }
        }
        // check() refused every change that would make an invalid member set.
        if let Ok(members) = Members::new(members) {
            self.members = members;
        }
        self.epoch += 1;
        self.since = pending.in_force_from;
        true
    }

    /// Whether `reconfiguration` may be ordered in the block at `height`, where this
    /// membership is in force (after [`Membership::advance_to`] that height).
    pub fn check(
        &self,
        spec: &ChainSpec,
        reconfiguration: &Reconfiguration,
        height: u64,
    ) -> Result<(), MembershipError> {
        let admins = spec.admins.as_ref().ok_or(MembershipError::NoAdmins)?;
        if let Some(pending) = &self.pending {
            return Err(MembershipError::InFlight {
                change: pending.change.to_string(),
                height: pending.height,
                in_force_from: pending.in_force_from,
                next: self.epoch + 1,
            });
        }
        if reconfiguration.epoch != self.epoch {
            return Err(MembershipError::WrongEpoch {
                signed_for: reconfiguration.epoch,
                current: self.epoch,
            });
        }
        reconfiguration.check_signatures(&spec.chain_hash(), admins)?;
        let key = reconfiguration.change.public_key();
        let hex_key = || hex::encode(key.as_bytes());
        let is_member = self.members.as_slice().iter().any(|m| m.public_key == *key);
        let is_learner = self.learners.iter().any(|l| l.public_key == *key);
        match &reconfiguration.change {
            Change::AddLearner { .. } if is_member => {
                Err(MembershipError::AlreadyPresent(hex_key(), "member"))
            }
            Change::AddLearner { .. } if is_learner => {
                Err(MembershipError::AlreadyPresent(hex_key(), "learner"))
            }
            Change::AddLearner { .. }
                if self.members.len() + self.learners.len() >= MAX_MEMBERS =>
            {
                Err(MembershipError::TooMany(MAX_MEMBERS))
            }
            Change::Promote { .. } if !is_learner => Err(MembershipError::NotALearner(hex_key())),
            Change::Promote { .. } => check_progress(spec, key, reconfiguration.progress, height),
            _ if reconfiguration.progress.is_some() => Err(MembershipError::UnexpectedProgress),
            Change::Remove { .. } if !is_member && !is_learner => {
                Err(MembershipError::NotPresent(hex_key()))
            }
            Change::Remove { .. } if is_member && self.members.len() == 1 => {
                Err(MembershipError::LastMember)
            }
            _ => Ok(()),
        }
    }

    /// Follows the block at `height` holding `entries`: puts a due change in force,
    /// then checks and records the block's reconfiguration, if any. A block that
    /// fails leaves the membership as it was.
    pub fn apply_block(
        &mut self,
        spec: &ChainSpec,
        height: u64,
        entries: &[Entry],
    ) -> Result<(), ChainError> {
        let mut next = self.clone();
        next.advance_to(height);
        let mut found = None;
        for entry in entries.iter().filter(|entry| entry.is_reconfiguration()) {
            if found.is_some() {
                return Err(MembershipError::TwoInOneBlock.into());
            }
            let reconfiguration = Reconfiguration::decode(&entry.data)?;
            next.check(spec, &reconfiguration, height)?;
            found = Some(reconfiguration);
        }
        if let Some(reconfiguration) = found {
            next.pending = Some(Pending {
                change: reconfiguration.change,
                height,
                in_force_from: Membership::in_force_from(height, spec.params.checkpoint_interval),
            });
        }
        *self = next;
        Ok(())
    }
}

/// A promotion in the block at `height` needs the learner's own word that it has
/// applied the chain to within a checkpoint interval of the tip below: the rule a
/// member checks before proposing it, made one every replica checks alike.
fn check_progress(
    spec: &ChainSpec,
    learner: &VerifyingKey,
    progress: Option<LearnerProgress>,
    height: u64,
) -> Result<(), MembershipError> {
    let progress = progress.ok_or(MembershipError::NoProgress)?;
    let tip = height.saturating_sub(1);
    if progress.height > tip || !progress.verify(learner, &spec.chain_hash()) {
        return Err(MembershipError::BadProgress(progress.height));
    }
    let interval = spec.params.checkpoint_interval;
    if progress.height.saturating_add(interval) < tip {
        return Err(MembershipError::LearnerBehind {
            height: progress.height,
            tip,
            interval,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{key, spec_checkpointing, spec_with_admins};

    /// Four members (seeds 1-4), admins of seeds 20-22 with threshold 2, a checkpoint
    /// every 10 blocks.
    fn admin_spec() -> ChainSpec {
        let members = [key(1), key(2), key(3), key(4)];
        spec_with_admins(&members, 0, 10, &[key(20), key(21), key(22)], 2)
    }

    fn signed(spec: &ChainSpec, epoch: u64, change: Change, admins: &[u8]) -> Reconfiguration {
        let mut reconfiguration = Reconfiguration::new(epoch, change).unwrap();
        for &seed in admins {
            reconfiguration.sign(&key(seed), &spec.chain_hash());
        }
        reconfiguration
    }

    fn add(seed: u8) -> Change {
        Change::AddLearner {
            public_key: key(seed).verifying_key(),
            p2p_addr: format!("10.0.0.{seed}:7101"),
            api_addr: Some(format!("10.0.0.{seed}:7100")),
        }
    }

    #[test]
    fn encoding_round_trips_and_refuses_what_is_off() {
        let spec = admin_spec();
        for change in [
            add(9),
            Change::AddLearner {
                public_key: key(9).verifying_key(),
                p2p_addr: "a:1".into(),
                api_addr: None,
            },
            Change::Promote {
                public_key: key(9).verifying_key(),
            },
            Change::Remove {
                public_key: key(1).verifying_key(),
            },
        ] {
            let reconfiguration = signed(&spec, 3, change, &[20, 22]);
            let bytes = reconfiguration.encode();
            assert_eq!(Reconfiguration::decode(&bytes).unwrap(), reconfiguration);
            assert!(Reconfiguration::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut long = bytes.clone();
            long.push(0);
            assert!(Reconfiguration::decode(&long).is_err());
            let entry = reconfiguration.to_entry();
            assert!(entry.is_reconfiguration());
            assert_eq!(Entry::decode(&entry.encode()).unwrap(), entry);
        }
        let bytes = signed(&spec, 0, add(9), &[]).encode();
        let mut kind = bytes.clone();
        kind[9] = 7;
        assert!(Reconfiguration::decode(&kind).is_err());
        let mut version = bytes.clone();
        version[0] = 2;
        assert!(matches!(
            Reconfiguration::decode(&version),
            Err(ChainError::UnsupportedVersion { .. })
        ));
        // A signature count far beyond the input allocates nothing.
        let mut count = bytes;
        let at = count.len() - 2;
        count[at..].copy_from_slice(&[0xff, 0xff]);
        assert!(Reconfiguration::decode(&count).is_err());
        assert!(Reconfiguration::new(
            0,
            Change::AddLearner {
                public_key: key(9).verifying_key(),
                p2p_addr: String::new(),
                api_addr: None,
            }
        )
        .is_err());
    }

    #[test]
    fn signatures_bind_the_change_the_chain_and_the_epoch() {
        let spec = admin_spec();
        let genesis = Membership::genesis(&spec);
        genesis
            .check(&spec, &signed(&spec, 0, add(9), &[20, 21]), 1)
            .unwrap();
        let cases = [
            (
                signed(&spec, 0, add(9), &[20]),
                "1 admin signatures, the chain needs 2",
            ),
            (signed(&spec, 0, add(9), &[20, 5]), "is not an admin"),
            (
                signed(&spec, 1, add(9), &[20, 21]),
                "signed for epoch 1, but epoch 0",
            ),
        ];
        for (reconfiguration, needle) in cases {
            let error = genesis
                .check(&spec, &reconfiguration, 1)
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{error:?} should say {needle:?}");
        }
        // Signed for another change, or another chain: the signature does not verify.
        let mut swapped = signed(&spec, 0, add(9), &[20, 21]);
        swapped.change = add(10);
        assert!(matches!(
            genesis.check(&spec, &swapped, 1),
            Err(MembershipError::BadSignature(_))
        ));
        let other = spec_checkpointing(&[key(1)], 0, 10);
        let mut elsewhere = Reconfiguration::new(0, add(9)).unwrap();
        elsewhere.sign(&key(20), &other.chain_hash());
        elsewhere.sign(&key(21), &other.chain_hash());
        assert!(genesis.check(&spec, &elsewhere, 1).is_err());
        // One admin twice is one signature.
        let mut twice = signed(&spec, 0, add(9), &[20]);
        twice.signatures.push(twice.signatures[0]);
        assert!(matches!(
            genesis.check(&spec, &twice, 1),
            Err(MembershipError::SignedTwice(_))
        ));
        // Without admins nothing changes.
        let fixed = spec_checkpointing(&[key(1)], 0, 10);
        assert_eq!(
            Membership::genesis(&fixed).check(&fixed, &signed(&fixed, 0, add(9), &[20]), 1),
            Err(MembershipError::NoAdmins)
        );
    }

    #[test]
    fn a_change_is_in_force_after_the_first_checkpoint_at_or_above_its_block() {
        assert_eq!(Membership::in_force_from(1, 10), 11);
        assert_eq!(Membership::in_force_from(10, 10), 11);
        assert_eq!(Membership::in_force_from(11, 10), 21);
        assert_eq!(Membership::in_force_from(5, u64::MAX), u64::MAX);
        let spec = admin_spec();
        let mut membership = Membership::genesis(&spec);
        let entry = |epoch, change| vec![signed(&spec, epoch, change, &[21, 22]).to_entry()];
        membership.apply_block(&spec, 5, &entry(0, add(9))).unwrap();
        assert_eq!(membership.pending.as_ref().unwrap().in_force_from, 11);
        // One change at a time, until the first is in force.
        let busy = membership
            .apply_block(&spec, 6, &entry(0, add(10)))
            .unwrap_err()
            .to_string();
        assert!(busy.contains("in flight until height 11"), "{busy}");
        assert!(busy.contains("epoch 1"), "{busy}");
        membership.apply_block(&spec, 10, &[]).unwrap();
        assert_eq!((membership.epoch, membership.learners.len()), (0, 0));
        membership.apply_block(&spec, 11, &[]).unwrap();
        assert_eq!((membership.epoch, membership.since), (1, 11));
        assert_eq!(membership.learners[0].public_key, key(9).verifying_key());
        assert_eq!(
            membership.learners[0].p2p_addr.as_deref(),
            Some("10.0.0.9:7101")
        );
        assert_eq!(membership.members.len(), 4);

        // The change signed for epoch 0 is now a replay.
        let replay = membership.apply_block(&spec, 12, &entry(0, add(10)));
        assert!(matches!(
            replay,
            Err(ChainError::Membership(MembershipError::WrongEpoch { .. }))
        ));
        let promote = Change::Promote {
            public_key: key(9).verifying_key(),
        };
        let mut promotion = signed(&spec, 1, promote, &[21, 22]);
        promotion.progress = Some(LearnerProgress::sign(&key(9), &spec.chain_hash(), 19));
        membership
            .apply_block(&spec, 20, &[promotion.to_entry()])
            .unwrap();
        assert_eq!(membership.pending.as_ref().unwrap().in_force_from, 21);
        membership.apply_block(&spec, 21, &[]).unwrap();
        assert_eq!((membership.epoch, membership.members.len()), (2, 5));
        assert!(membership.learners.is_empty());
        // Last in the rotation; n = 5 has f = 1 and q = 4.
        assert_eq!(
            membership.members.as_slice()[4].public_key,
            key(9).verifying_key()
        );
        assert_eq!(membership.members.quorum(), 4);

        let remove = |seed: u8| Change::Remove {
            public_key: key(seed).verifying_key(),
        };
        membership
            .apply_block(&spec, 25, &entry(2, remove(1)))
            .unwrap();
        membership.apply_block(&spec, 31, &[]).unwrap();
        assert_eq!((membership.epoch, membership.since), (3, 31));
        membership
            .apply_block(&spec, 32, &entry(3, add(11)))
            .unwrap();
        let bytes = membership.encode();
        assert_eq!(Membership::decode(&bytes).unwrap(), membership);
        assert!(Membership::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            membership.members.as_slice()[0].public_key,
            key(2).verifying_key()
        );
    }

    #[test]
    fn impossible_changes_are_refused_with_reasons() {
        let spec = admin_spec();
        let one = spec_with_admins(&[key(1)], 0, 10, &[key(20)], 1);
        let membership = Membership::genesis(&spec);
        let key_of = |seed: u8| key(seed).verifying_key();
        let cases = [
            (&spec, add(1), "is already a member"),
            (
                &spec,
                Change::Promote {
                    public_key: key_of(9),
                },
                "is not a learner",
            ),
            (
                &spec,
                Change::Remove {
                    public_key: key_of(9),
                },
                "neither a member nor a learner",
            ),
            (
                &one,
                Change::Remove {
                    public_key: key_of(1),
                },
                "the last member",
            ),
        ];
        for (spec, change, needle) in cases {
            let signers: &[u8] = match spec.admins.as_ref().map(Admins::threshold) {
                Some(1) => &[20],
                _ => &[20, 21],
            };
            let error = Membership::genesis(spec)
                .check(spec, &signed(spec, 0, change, signers), 1)
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{error:?} should say {needle:?}");
        }
        // Two changes in one block, and a failing block changes nothing.
        let mut before = membership.clone();
        let two = vec![
            signed(&spec, 0, add(9), &[20, 21]).to_entry(),
            signed(&spec, 0, add(10), &[20, 21]).to_entry(),
        ];
        assert_eq!(
            before.apply_block(&spec, 3, &two),
            Err(MembershipError::TwoInOneBlock.into())
        );
        assert_eq!(before, membership);
        // Client entries are no reconfiguration, whatever their data.
        let lookalike = Entry::new(signed(&spec, 0, add(9), &[20, 21]).encode());
        before.apply_block(&spec, 3, &[lookalike]).unwrap();
        assert_eq!(before, membership);
    }

    #[test]
    fn addresses_a_node_can_be_dialed_at_pass() {
        for good in [
            "127.0.0.1:7101",
            "node-3.ledger.svc:7101",
            "[::1]:7101",
            "a_b:1",
        ] {
            assert_eq!(address_problem(good), None, "{good}");
        }
        for bad in [
            "nonsense",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            ":7101",
            "::1:7101",
            "a b:1",
            "[x]:1",
            "0.0.0.0:7101",
            "[::]:7101",
            "256.1.1.1:7101",
        ] {
            assert!(address_problem(bad).is_some(), "{bad}");
        }
    }

    /// Every replica refuses alike a promotion without the learner's word that it is
    /// within a checkpoint interval of the tip, or with a word it did not give.
    #[test]
    fn a_promotion_carries_the_learners_recent_progress() {
        let spec = admin_spec();
        let mut membership = Membership::genesis(&spec);
        let add = signed(&spec, 0, add(9), &[20, 21]).to_entry();
        membership.apply_block(&spec, 5, &[add]).unwrap();
        membership.advance_to(11);
        let chain_hash = spec.chain_hash();
        let promotion = |progress: Option<LearnerProgress>| {
            let promote = Change::Promote {
                public_key: key(9).verifying_key(),
            };
            let mut promotion = signed(&spec, 1, promote, &[20, 21]);
            promotion.progress = progress;
            promotion
        };
        // The block at 30 sits on the tip at 29: the learner may be 10 behind.
        let at = |height| Some(LearnerProgress::sign(&key(9), &chain_hash, height));
        membership.check(&spec, &promotion(at(19)), 30).unwrap();
        membership.check(&spec, &promotion(at(29)), 30).unwrap();
        let cases = [
            (promotion(None), MembershipError::NoProgress),
            (
                promotion(at(18)),
                MembershipError::LearnerBehind {
                    height: 18,
                    tip: 29,
                    interval: 10,
                },
            ),
            // Above the tip: no learner holds that yet.
            (promotion(at(30)), MembershipError::BadProgress(30)),
            // Signed by another key, or for another height.
            (
                promotion(Some(LearnerProgress::sign(&key(8), &chain_hash, 25))),
                MembershipError::BadProgress(25),
            ),
            (
                promotion(at(25).map(|p| LearnerProgress { height: 26, ..p })),
                MembershipError::BadProgress(26),
            ),
        ];
        for (promotion, refused) in cases {
            assert_eq!(membership.check(&spec, &promotion, 30), Err(refused));
            // The progress travels in the entry, outside what the admins signed.
            let bytes = promotion.encode();
            assert_eq!(Reconfiguration::decode(&bytes).unwrap(), promotion);
            promotion
                .check_signatures(&chain_hash, spec.admins.as_ref().unwrap())
                .unwrap();
        }
        let mut removal = signed(
            &spec,
            1,
            Change::Remove {
                public_key: key(1).verifying_key(),
            },
            &[20, 21],
        );
        removal.progress = at(29);
        assert_eq!(
            membership.check(&spec, &removal, 30),
            Err(MembershipError::UnexpectedProgress)
        );
        // In a block, the height is the block's.
        let mut later = membership.clone();
        let entry = promotion(at(19)).to_entry();
        assert!(later
            .apply_block(&spec, 31, std::slice::from_ref(&entry))
            .is_err());
        later.apply_block(&spec, 30, &[entry]).unwrap();
    }
}
