//! The genesis file, the chain spec derived from it, and the genesis block.
//!
//! Every node derives the same chain hash and genesis block from the same file: the
//! canonical spec encoding covers everything that decides block validity (limits,
//! initial difficulty, member keys) and nothing operational (addresses), so an operator
//! can move a node to another address without forking the chain.

use std::collections::HashSet;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::codec::Reader;
use super::merkle::empty_root;
use super::{Block, ChainError, GenesisError, Hash, Header, HEADER_VERSION};

const SPEC_MAGIC: &[u8; 8] = b"LDGRSPEC";
/// A chain without admins: its membership is fixed at genesis.
const SPEC_VERSION_FIXED: u16 = 1;
/// A chain with admin keys, which can change its membership.
const SPEC_VERSION_ADMINS: u16 = 2;
const MAX_CHAIN_ID_BYTES: usize = 64;
pub(super) const MAX_MEMBERS: usize = 1024;
const MAX_ADMINS: usize = 256;
/// Entries above 16 MiB would not fit a network frame; refuse such a genesis outright.
const MAX_ENTRY_BYTES_CEILING: u32 = 16 << 20;

/// The genesis file as operators write it (TOML).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisFile {
    /// Human-readable chain name, 1 to 64 bytes.
    pub chain_id: String,
    /// Genesis timestamp, ms since the Unix epoch; fixed so every node agrees.
    pub timestamp_ms: u64,
    /// Initial difficulty in leading zero bits.
    pub difficulty: u32,
    /// Largest entry data accepted, in bytes.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: u32,
    /// Most entries in one block.
    #[serde(default = "default_max_block_entries")]
    pub max_block_entries: u32,
    /// How far a block timestamp may run ahead of a validator's clock.
    #[serde(default = "default_max_future_drift_ms")]
    pub max_future_drift_ms: u64,
    /// Heights between PBFT checkpoints (K).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// ed25519 public keys (hex) that may sign reconfigurations; none fixes the
    /// membership for good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<String>,
    /// How many admin signatures a reconfiguration needs; required with `admins`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_threshold: Option<u32>,
    /// The members, in primary rotation order (primary of view v = member v mod n).
    pub members: Vec<GenesisMember>,
}

impl GenesisFile {
    /// A genesis file with the default limits and no admins.
    pub fn new(
        chain_id: &str,
        timestamp_ms: u64,
        difficulty: u32,
        members: Vec<GenesisMember>,
    ) -> GenesisFile {
        GenesisFile {
            chain_id: chain_id.to_owned(),
            timestamp_ms,
            difficulty,
            max_entry_bytes: default_max_entry_bytes(),
            max_block_entries: default_max_block_entries(),
            max_future_drift_ms: default_max_future_drift_ms(),
            checkpoint_interval: default_checkpoint_interval(),
            admins: Vec::new(),
            admin_threshold: None,
            members,
        }
    }
}

/// One member in the genesis file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisMember {
    /// ed25519 public key, 64 hex characters.
    pub public_key: String,
    /// Where peers reach it (not part of the chain hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p_addr: Option<String>,
    /// Where clients reach it (not part of the chain hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_addr: Option<String>,
}

/// Limit defaults, shared with tools that write genesis files.
pub(crate) fn default_max_entry_bytes() -> u32 {
    64 * 1024
}
pub(crate) fn default_max_block_entries() -> u32 {
    10_000
}
pub(crate) fn default_max_future_drift_ms() -> u64 {
    15_000
}
pub(crate) fn default_checkpoint_interval() -> u64 {
    100
}

/// Validity rules every member must apply identically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainParams {
    /// Largest entry data, bytes.
    pub max_entry_bytes: u32,
    /// Most entries per block.
    pub max_block_entries: u32,
    /// Allowed clock lead of a block timestamp, ms.
    pub max_future_drift_ms: u64,
    /// PBFT checkpoint interval K.
    pub checkpoint_interval: u64,
}

/// A member of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's ed25519 key.
    pub public_key: VerifyingKey,
    /// SHA-256 of the public key; shown in hex as the node id.
    pub node_id: Hash,
    /// Peer address hint.
    pub p2p_addr: Option<String>,
    /// Client API address hint.
    pub api_addr: Option<String>,
}

/// The faults `n` members tolerate: f = ⌊(n − 1) / 3⌋ (see [`Members::max_faulty`]).
pub fn max_faulty(n: usize) -> usize {
    n.saturating_sub(1) / 3
}

/// The quorum of `n` members: ⌈(n + f + 1) / 2⌉ with f = ⌊(n − 1) / 3⌋ (see
/// [`Members::quorum`]).
pub fn quorum(n: usize) -> usize {
    (n + max_faulty(n) + 2) / 2
}

/// The member set, in rotation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members(Vec<Member>);

impl Members {
    /// Builds a member set from keys, refusing duplicates and an empty set.
    pub fn new(members: Vec<Member>) -> Result<Members, ChainError> {
        if members.is_empty() || members.len() > MAX_MEMBERS {
            return Err(GenesisError::MemberCount {
                found: members.len(),
                max: MAX_MEMBERS,
            }
            .into());
        }
        let mut seen = HashSet::new();
        for member in &members {
            if !seen.insert(member.node_id) {
                return Err(GenesisError::DuplicateKey {
                    role: "member",
                    key: hex::encode(member.public_key.as_bytes()),
                }
                .into());
            }
        }
        Ok(Members(members))
    }

    /// The members in order.
    pub fn as_slice(&self) -> &[Member] {
        &self.0
    }

    /// Number of members n.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a member set has at least one member.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Faults tolerated: f = ⌊(n − 1) / 3⌋.
    pub fn max_faulty(&self) -> usize {
        max_faulty(self.0.len())
    }

    /// Matching votes that make a certificate: q = ⌈(n + f + 1) / 2⌉, so that any two
    /// quorums share at least f + 1 members, one of them honest. It is 2f + 1 exactly
    /// when n = 3f + 1; at other sizes 2f + 1 lets two quorums be disjoint (n = 2, 3,
    /// 6) or meet only in a faulty member (n = 5).
    pub fn quorum(&self) -> usize {
        quorum(self.0.len())
    }

    /// The key of the member with `node_id`.
    pub fn key_of(&self, node_id: &Hash) -> Option<&VerifyingKey> {
        self.0
            .iter()
            .find(|member| member.node_id == *node_id)
            .map(|member| &member.public_key)
    }
}

/// The keys that may change the membership, and how many of them must sign a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admins {
    keys: Vec<VerifyingKey>,
    threshold: usize,
}

impl Admins {
    /// Builds an admin set, refusing duplicate keys and a threshold outside
    /// `1..=keys.len()`.
    pub fn new(keys: Vec<VerifyingKey>, threshold: usize) -> Result<Admins, ChainError> {
        if keys.is_empty() || keys.len() > MAX_ADMINS {
            return Err(GenesisError::AdminCount {
                found: keys.len(),
                max: MAX_ADMINS,
            }
            .into());
        }
        if threshold == 0 || threshold > keys.len() {
            return Err(GenesisError::AdminThreshold {
                admins: keys.len(),
                threshold: threshold as u64,
            }
            .into());
        }
        let mut seen = HashSet::new();
        for key in &keys {
            if !seen.insert(key.to_bytes()) {
                return Err(GenesisError::DuplicateKey {
                    role: "admin",
                    key: hex::encode(key.as_bytes()),
                }
                .into());
            }
        }
        Ok(Admins { keys, threshold })
    }

    /// The admin keys, in genesis order.
    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    /// Distinct admin signatures a reconfiguration needs.
    pub fn threshold(&self) -> usize {
        self.threshold
    }
}

/// A validated chain definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    /// Human-readable chain name.
    pub chain_id: String,
    /// Genesis timestamp, ms.
    pub timestamp_ms: u64,
    /// Initial difficulty, leading zero bits.
    pub difficulty: u32,
    /// Validity limits.
    pub params: ChainParams,
    /// The members.
    pub members: Members,
    /// Who may change the members; `None` fixes them at genesis.
    pub admins: Option<Admins>,
}

/// An ed25519 key fit to sign for a chain: a valid point of large order.
pub(super) fn chain_key(
    role: &'static str,
    public_key: [u8; 32],
) -> Result<VerifyingKey, ChainError> {
    let key = VerifyingKey::from_bytes(&public_key).map_err(|_| GenesisError::KeyInvalid {
        role,
        key: hex::encode(public_key),
    })?;
    if key.is_weak() {
        return Err(GenesisError::KeyWeak {
            role,
            key: hex::encode(public_key),
        }
        .into());
    }
    Ok(key)
}

/// A key the genesis file writes as 64 hex characters.
fn hex_key(role: &'static str, text: &str) -> Result<VerifyingKey, ChainError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).map_err(|_| GenesisError::KeyNotHex {
        role,
        key: text.to_owned(),
    })?;
    chain_key(role, key)
}

fn member_from_key(public_key: [u8; 32]) -> Result<Member, ChainError> {
    let key = chain_key("member", public_key)?;
    Ok(Member {
        public_key: key,
        node_id: Hash::digest(&public_key),
        p2p_addr: None,
        api_addr: None,
    })
}

impl ChainSpec {
    /// Parses and validates a genesis file's text.
    pub fn from_toml(text: &str) -> Result<ChainSpec, ChainError> {
        let file: GenesisFile =
            toml::from_str(text).map_err(|error| GenesisError::Toml(error.to_string()))?;
        ChainSpec::from_file(file)
    }

    /// Validates a parsed genesis file.
    pub fn from_file(file: GenesisFile) -> Result<ChainSpec, ChainError> {
        let mut members = Vec::with_capacity(file.members.len());
        for entry in file.members {
            let public_key = hex_key("member", &entry.public_key)?;
            members.push(Member {
                public_key,
                node_id: Hash::digest(public_key.as_bytes()),
                p2p_addr: entry.p2p_addr,
                api_addr: entry.api_addr,
            });
        }
        let admins = match (file.admins.is_empty(), file.admin_threshold) {
            (true, None) => None,
            (true, Some(_)) => return Err(GenesisError::ThresholdWithoutAdmins.into()),
            (false, None) => {
                return Err(GenesisError::AdminThresholdMissing {
                    admins: file.admins.len(),
                }
                .into())
            }
            (false, Some(threshold)) => {
                let keys = file
                    .admins
                    .iter()
                    .map(|key| hex_key("admin", key))
                    .collect::<Result<Vec<_>, _>>()?;
                // A threshold beyond usize is beyond any key count: refused by new().
                Some(Admins::new(
                    keys,
                    usize::try_from(threshold).unwrap_or(usize::MAX),
                )?)
            }
        };
        let spec = ChainSpec {
            chain_id: file.chain_id,
            timestamp_ms: file.timestamp_ms,
            difficulty: file.difficulty,
            params: ChainParams {
                max_entry_bytes: file.max_entry_bytes,
                max_block_entries: file.max_block_entries,
                max_future_drift_ms: file.max_future_drift_ms,
                checkpoint_interval: file.checkpoint_interval,
            },
            members: Members::new(members)?,
            admins,
        };
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), ChainError> {
        if self.chain_id.is_empty()
            || self.chain_id.len() > MAX_CHAIN_ID_BYTES
            || self.chain_id.chars().any(char::is_control)
        {
            return Err(GenesisError::ChainId {
                max: MAX_CHAIN_ID_BYTES,
            }
            .into());
        }
        if self.difficulty > 256 {
            return Err(GenesisError::Difficulty(self.difficulty).into());
        }
        if self.params.max_entry_bytes == 0 || self.params.max_entry_bytes > MAX_ENTRY_BYTES_CEILING
        {
            return Err(GenesisError::MaxEntryBytes {
                max: MAX_ENTRY_BYTES_CEILING,
            }
            .into());
        }
        if self.params.max_block_entries == 0 || self.params.max_block_entries > 1_000_000 {
            return Err(GenesisError::MaxBlockEntries { max: 1_000_000 }.into());
        }
        if self.params.checkpoint_interval == 0 {
            return Err(GenesisError::CheckpointInterval.into());
        }
        Ok(())
    }

    /// The genesis file that describes this spec (for `ledgerd dev init` and tests).
    pub fn to_file(&self) -> GenesisFile {
        GenesisFile {
            chain_id: self.chain_id.clone(),
            timestamp_ms: self.timestamp_ms,
            difficulty: self.difficulty,
            max_entry_bytes: self.params.max_entry_bytes,
            max_block_entries: self.params.max_block_entries,
            max_future_drift_ms: self.params.max_future_drift_ms,
            checkpoint_interval: self.params.checkpoint_interval,
            admins: self
                .admins
                .iter()
                .flat_map(Admins::keys)
                .map(|key| hex::encode(key.as_bytes()))
                .collect(),
            // new() bounds the threshold by the key count, at most 256.
            admin_threshold: self.admins.as_ref().map(|admins| admins.threshold() as u32),
            members: self
                .members
                .as_slice()
                .iter()
                .map(|member| GenesisMember {
                    public_key: hex::encode(member.public_key.as_bytes()),
                    p2p_addr: member.p2p_addr.clone(),
                    api_addr: member.api_addr.clone(),
                })
                .collect(),
        }
    }

    /// The genesis file text.
    pub fn to_toml(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        toml::to_string(&self.to_file()).unwrap_or_default()
    }

    /// The canonical encoding hashed into the chain hash (docs/FORMAT.md, "Chain spec").
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 32 * self.members.len());
        out.extend_from_slice(SPEC_MAGIC);
        // A chain without admins keeps the encoding (and so the chain hash) it had
        // before admins existed.
        let version = match self.admins {
            None => SPEC_VERSION_FIXED,
            Some(_) => SPEC_VERSION_ADMINS,
        };
        out.extend_from_slice(&version.to_be_bytes());
        // check() bounds the id to 64 bytes and the members to 1024.
        out.push(self.chain_id.len() as u8);
        out.extend_from_slice(self.chain_id.as_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.difficulty.to_be_bytes());
        out.extend_from_slice(&self.params.max_entry_bytes.to_be_bytes());
        out.extend_from_slice(&self.params.max_block_entries.to_be_bytes());
        out.extend_from_slice(&self.params.max_future_drift_ms.to_be_bytes());
        out.extend_from_slice(&self.params.checkpoint_interval.to_be_bytes());
        out.extend_from_slice(&(self.members.len() as u16).to_be_bytes());
        for member in self.members.as_slice() {
            out.extend_from_slice(member.public_key.as_bytes());
        }
        if let Some(admins) = &self.admins {
            // new() bounds both by 256.
            out.extend_from_slice(&(admins.keys.len() as u16).to_be_bytes());
            for key in &admins.keys {
                out.extend_from_slice(key.as_bytes());
            }
            out.extend_from_slice(&(admins.threshold as u16).to_be_bytes());
        }
        out
    }

    /// Decodes a canonical spec (addresses are not part of it and come back empty).
    pub fn decode(bytes: &[u8]) -> Result<ChainSpec, ChainError> {
        let mut reader = Reader::new(bytes, "chain spec");
        if reader.take(SPEC_MAGIC.len())? != SPEC_MAGIC {
            return Err(ChainError::Malformed {
                what: "chain spec",
                reason: "bad magic",
            });
        }
        let version = reader.u16()?;
        if version != SPEC_VERSION_FIXED && version != SPEC_VERSION_ADMINS {
            return Err(ChainError::UnsupportedVersion {
                what: "chain spec",
                version: version.into(),
            });
        }
        let id_len = usize::from(reader.u8()?);
        let chain_id = String::from_utf8(reader.take(id_len)?.to_vec()).map_err(|_| {
            ChainError::Malformed {
                what: "chain spec",
                reason: "chain id is not UTF-8",
            }
        })?;
        let timestamp_ms = reader.u64()?;
        let difficulty = reader.u32()?;
        let params = ChainParams {
            max_entry_bytes: reader.u32()?,
            max_block_entries: reader.u32()?,
            max_future_drift_ms: reader.u64()?,
            checkpoint_interval: reader.u64()?,
        };
        let count = usize::from(reader.u16()?);
        let mut members = Vec::with_capacity(count.min(MAX_MEMBERS));
        for _ in 0..count {
            members.push(member_from_key(reader.array()?)?);
        }
        let admins = match version {
            SPEC_VERSION_ADMINS => {
                let count = usize::from(reader.u16()?);
                let mut keys = Vec::with_capacity(count.min(MAX_ADMINS));
                for _ in 0..count {
                    keys.push(chain_key("admin", reader.array()?)?);
                }
                Some(Admins::new(keys, usize::from(reader.u16()?))?)
            }
            _ => None,
        };
        reader.finish()?;
        let spec = ChainSpec {
            chain_id,
            timestamp_ms,
            difficulty,
            params,
            members: Members::new(members)?,
            admins,
        };
        spec.check()?;
        Ok(spec)
    }

    /// SHA-256 of the canonical spec: the chain's identity, in every header.
    pub fn chain_hash(&self) -> Hash {
        Hash::digest(&self.encode())
    }

    /// The genesis block: height 0, no entries, no proof of work, all-zero parent.
    pub fn genesis_block(&self) -> Block {
        Block {
            header: Header {
                version: HEADER_VERSION,
                chain_hash: self.chain_hash(),
                height: 0,
                timestamp_ms: self.timestamp_ms,
                prev_hash: Hash::ZERO,
                log_size: 0,
                log_root: empty_root(),
                difficulty: self.difficulty,
                nonce: 0,
            },
            entries: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{key, spec};

    /// A two-member genesis file; the keys are real points (from seeds 1 and 2).
    fn genesis_text() -> String {
        format!(
            r#"
chain_id = "audit-trail"
timestamp_ms = 1767225600000
difficulty = 12

[[members]]
public_key = "{}"
p2p_addr = "10.0.0.1:7000"

[[members]]
public_key = "{}"
"#,
            hex::encode(key(1).verifying_key().as_bytes()),
            hex::encode(key(2).verifying_key().as_bytes())
        )
    }

    /// DESIGN.md, "Consensus": any two quorums share f + 1 members (so one honest
    /// one), the n - f members that may be honest can always form one, and the rule is
    /// PBFT's 2f + 1 exactly at n = 3f + 1.
    #[test]
    fn quorums_intersect_in_an_honest_member_and_stay_reachable_at_every_size() {
        for n in 1..=MAX_MEMBERS {
            let f = (n - 1) / 3;
            let q = quorum(n);
            assert!(
                2 * q > n + f, // two quorums share 2q - n members: at least f + 1
                "n = {n}: two quorums of {q} may share only f"
            );
            assert!(q <= n - f, "n = {n}: {q} votes need some of the f faulty");
            if n == 3 * f + 1 {
                assert_eq!(q, 2 * f + 1, "n = {n}");
            }
        }
        let table: Vec<usize> = (1..=10).map(quorum).collect();
        assert_eq!(table, [1, 2, 2, 3, 4, 4, 5, 6, 6, 7]);
    }

    #[test]
    fn genesis_is_deterministic_and_ignores_addresses() {
        let genesis = genesis_text();
        let first = ChainSpec::from_toml(&genesis).unwrap();
        let moved = ChainSpec::from_toml(&genesis.replace("10.0.0.1", "10.9.9.9")).unwrap();
        assert_eq!(first.chain_hash(), moved.chain_hash());
        assert_eq!(first.genesis_block().hash(), moved.genesis_block().hash());
        assert_eq!(first.params.max_entry_bytes, 65536);
        assert_eq!(
            first.members.as_slice()[0].p2p_addr.as_deref(),
            Some("10.0.0.1:7000")
        );

        let harder = ChainSpec::from_toml(&genesis.replace("= 12", "= 13")).unwrap();
        assert_ne!(first.chain_hash(), harder.chain_hash());
    }

    #[test]
    fn encoding_round_trips_through_decode_and_toml() {
        let spec = spec(&[key(1), key(2), key(3), key(4)], 8);
        assert_eq!(ChainSpec::decode(&spec.encode()).unwrap(), spec);
        assert_eq!(ChainSpec::from_toml(&spec.to_toml()).unwrap(), spec);
        assert_eq!(spec.members.max_faulty(), 1);
        assert_eq!(spec.members.quorum(), 3);
    }

    fn with_admins(genesis: &str, admins: &[u8], threshold: Option<u32>) -> String {
        let keys: Vec<String> = admins
            .iter()
            .map(|&seed| format!("{:?}", hex::encode(key(seed).verifying_key().as_bytes())))
            .collect();
        let threshold = threshold
            .map(|threshold| format!("admin_threshold = {threshold}\n"))
            .unwrap_or_default();
        genesis.replacen(
            "\n[[members]]",
            &format!("admins = [{}]\n{threshold}\n[[members]]", keys.join(", ")),
            1,
        )
    }

    #[test]
    fn admins_make_a_version_2_spec_and_a_chain_without_keeps_its_hash() {
        let genesis = genesis_text();
        let fixed = ChainSpec::from_toml(&genesis).unwrap();
        assert_eq!(fixed.admins, None);
        // Version 1, byte for byte as before admins existed: old chains keep their hash.
        assert_eq!(&fixed.encode()[8..10], &[0, 1]);

        let text = with_admins(&genesis, &[7, 8, 9], Some(2));
        let spec = ChainSpec::from_toml(&text).unwrap();
        let admins = spec.admins.as_ref().unwrap();
        assert_eq!(admins.threshold(), 2);
        assert_eq!(admins.keys()[2], key(9).verifying_key());
        let encoded = spec.encode();
        assert_eq!(&encoded[8..10], &[0, 2]);
        assert_eq!(encoded.len(), fixed.encode().len() + 2 + 3 * 32 + 2);
        assert_ne!(spec.chain_hash(), fixed.chain_hash());
        let decoded = ChainSpec::decode(&encoded).unwrap();
        assert_eq!(decoded.admins, spec.admins);
        assert_eq!(decoded.chain_hash(), spec.chain_hash());
        assert_eq!(ChainSpec::from_toml(&spec.to_toml()).unwrap(), spec);
        // Another threshold is another chain.
        let other = ChainSpec::from_toml(&with_admins(&genesis, &[7, 8, 9], Some(3))).unwrap();
        assert_ne!(other.chain_hash(), spec.chain_hash());

        // A version 2 spec without admins, or with a threshold of none, does not decode.
        let mut forged = fixed.encode();
        forged[9] = 2;
        forged.extend_from_slice(&[0, 0, 0, 0]);
        assert!(ChainSpec::decode(&forged).is_err());
        let mut zero = encoded.clone();
        let last = zero.len() - 1;
        zero[last] = 0;
        assert!(ChainSpec::decode(&zero)
            .unwrap_err()
            .to_string()
            .contains("admin_threshold"));
    }

    #[test]
    fn bad_admin_lists_are_refused_with_reasons() {
        let genesis = genesis_text();
        let cases = [
            (with_admins(&genesis, &[7, 8], None), "admin_threshold"),
            (with_admins(&genesis, &[7, 8], Some(0)), "admin_threshold"),
            (
                with_admins(&genesis, &[7, 8], Some(3)),
                "number of admins (2), found 3",
            ),
            (
                with_admins(&genesis, &[], Some(1)),
                "without admins leave it out",
            ),
            (with_admins(&genesis, &[7, 7], Some(1)), "admin"),
            (
                genesis.replacen(
                    "\n[[members]]",
                    "admins = [\"beef\"]\nadmin_threshold = 1\n\n[[members]]",
                    1,
                ),
                "admin public key \"beef\"",
            ),
        ];
        for (text, needle) in cases {
            let error = ChainSpec::from_toml(&text).unwrap_err().to_string();
            assert!(
                error.contains(needle),
                "{error:?} should mention {needle:?}"
            );
        }
        let twice = ChainSpec::from_toml(&with_admins(&genesis, &[7, 7], Some(1)))
            .unwrap_err()
            .to_string();
        assert!(twice.contains("listed twice"), "{twice}");
    }

    #[test]
    fn bad_genesis_files_are_refused_with_reasons() {
        let genesis = genesis_text();
        let first_key = hex::encode(key(1).verifying_key().as_bytes());
        let second_key = hex::encode(key(2).verifying_key().as_bytes());
        let cases = [
            (genesis.replace("audit-trail", ""), "chain_id"),
            (genesis.replace("= 12", "= 300"), "difficulty"),
            (
                genesis.replace(&first_key, &format!("zz{}", &first_key[2..])),
                "hex",
            ),
            (genesis.replace(&second_key, &first_key), "twice"),
            (format!("{genesis}\nsurprise = 1\n"), "unknown field"),
            (
                genesis.replace(
                    "difficulty = 12",
                    "difficulty = 12\ncheckpoint_interval = 0",
                ),
                "checkpoint",
            ),
            (genesis.replace("[[members]]", "[[nobody]]"), "members"),
        ];
        for (text, needle) in cases {
            let error = ChainSpec::from_toml(&text).unwrap_err().to_string();
            assert!(
                error.contains(needle),
                "{error:?} should mention {needle:?}"
            );
        }
        // The identity point has small order: never a member key.
        let weak = genesis.replace(
            &second_key,
            "0100000000000000000000000000000000000000000000000000000000000000",
        );
        assert!(ChainSpec::from_toml(&weak)
            .unwrap_err()
            .to_string()
            .contains("small-order"));
    }
}
