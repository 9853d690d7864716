//! The first frame each side sends on a member connection, after TLS: which protocol,
//! which chain, which member, which plugins. Two nodes of different chains, genesis
//! files or protocol versions refuse each other with a message that says which; a
//! plugin fingerprint that differs is reported, since a plugin only matters when it
//! judges a block differently.

use crate::chain::Hash;
use crate::consensus::MemberIndex;

/// The member-to-member protocol version; a node refuses peers of another.
pub const PROTOCOL_VERSION: u16 = 2;

const MAGIC: &[u8; 8] = b"LDGR-P2P";

/// Longest chain id a hello may carry: a bound on what a peer sends (genesis allows
/// 64 bytes).
const MAX_CHAIN_ID: usize = 1024;

/// Longest plugin fingerprint line carried: every plugin's, about a hundred bytes
/// each, never cut short. A node whose line is longer refuses to start
/// ([`Hello::check_fits`]); a peer's longer one refuses its hello.
pub const MAX_PLUGINS_TEXT: usize = u16::MAX as usize;

/// The largest encoded hello.
pub const MAX_HELLO_BYTES: usize =
    MAGIC.len() + 2 + 2 + MAX_CHAIN_ID + 32 + 2 + 2 + MAX_PLUGINS_TEXT;

/// What a node says of itself when a connection opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol: u16,
    /// The genesis file's chain id.
    pub chain_id: String,
    /// The genesis block's hash.
    pub genesis_hash: Hash,
    /// The sender's member index in the membership it runs, for the logs: a peer is
    /// known by its TLS key, and its index in another epoch may differ.
    pub member: MemberIndex,
    /// The sender's plugins (name, version, SHA-256 of each), empty without plugins.
    pub plugins: String,
}

/// Why a peer's hello was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Not a hello at all.
    #[error("malformed hello: {0}")]
    Malformed(&'static str),
    /// Another protocol version.
    #[error("peer speaks protocol {theirs}, this node {ours}")]
    Protocol {
        /// The peer's.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// Another chain.
    #[error("peer is on chain {theirs:?}, this node on {ours:?}")]
    Chain {
        /// The peer's.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// Same chain id, another genesis.
    #[error("peer has genesis {theirs}, this node {ours}: the genesis files differ")]
    Genesis {
        /// The peer's.
        theirs: Hash,
        /// Ours.
        ours: Hash,
    },
}

impl Hello {
    /// Whether every field fits its length prefix, so [`Hello::encode`] cuts
    /// nothing: checked once at start-up.
    pub fn check_fits(&self) -> Result<(), String> {
        if self.chain_id.len() > MAX_CHAIN_ID {
            return Err(format!(
                "the chain id is {} bytes; the peer protocol carries at most {MAX_CHAIN_ID}",
                self.chain_id.len()
            ));
        }
        if self.plugins.len() > MAX_PLUGINS_TEXT {
            return Err(format!(
                "the plugin fingerprints take {} bytes; the peer protocol carries at most \
                 {MAX_PLUGINS_TEXT}: list fewer plugins",
                self.plugins.len()
            ));
        }
        Ok(())
    }

    /// Canonical bytes. A field longer than its limit is cut, which
    /// [`Hello::check_fits`] at start-up rules out.
    pub fn encode(&self) -> Vec<u8> {
        let text = |s: &str, limit: usize| {
            let bytes = &s.as_bytes()[..s.len().min(limit)];
            let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(bytes);
            out
        };
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.protocol.to_be_bytes());
        out.extend(text(&self.chain_id, MAX_CHAIN_ID));
        out.extend_from_slice(&self.genesis_hash.0);
        out.extend_from_slice(&self.member.to_be_bytes());
        out.extend(text(&self.plugins, MAX_PLUGINS_TEXT));
        out
    }

    /// Parses a hello; the protocol version is read before anything else, so a
    /// future version with another layout is still recognised as such.
    pub fn decode(bytes: &[u8]) -> Result<Hello, HelloError> {
        let mut rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(HelloError::Malformed("not a ledger peer"))?;
        let mut take = |n: usize| -> Result<&[u8], HelloError> {
            if rest.len() < n {
                return Err(HelloError::Malformed("truncated"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let u16_at = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        let protocol = u16_at(take(2)?);
        if protocol != PROTOCOL_VERSION {
            return Err(HelloError::Protocol {
                theirs: protocol,
                ours: PROTOCOL_VERSION,
            });
        }
        let len = usize::from(u16_at(take(2)?));
        if len > MAX_CHAIN_ID {
            return Err(HelloError::Malformed("chain id too long"));
        }
        let chain_id = String::from_utf8(take(len)?.to_vec())
            .map_err(|_| HelloError::Malformed("chain id is not UTF-8"))?;
        let genesis_hash = Hash(take(32)?.try_into().unwrap_or([0; 32]));
        let member = u16_at(take(2)?);
        let len = usize::from(u16_at(take(2)?));
        let plugins = String::from_utf8(take(len)?.to_vec())
            .map_err(|_| HelloError::Malformed("plugin fingerprint is not UTF-8"))?;
        if !rest.is_empty() {
            return Err(HelloError::Malformed("trailing bytes"));
        }
        Ok(Hello {
            protocol,
            chain_id,
            genesis_hash,
            member,
            plugins,
        })
    }

    /// Checks a peer's hello against ours: the same chain and genesis.
    pub fn admit(&self, theirs: &Hello) -> Result<(), HelloError> {
        if theirs.chain_id != self.chain_id {
            return Err(HelloError::Chain {
                theirs: theirs.chain_id.clone(),
                ours: self.chain_id.clone(),
            });
        }
        if theirs.genesis_hash != self.genesis_hash {
            return Err(HelloError::Genesis {
                theirs: theirs.genesis_hash,
                ours: self.genesis_hash,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            chain_id: "test".into(),
            genesis_hash: Hash([3; 32]),
            member: 2,
            plugins: "tx-policy 1.0.0 ab12".into(),
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let bytes = hello().encode();
        assert!(bytes.len() <= MAX_HELLO_BYTES);
        assert_eq!(Hello::decode(&bytes), Ok(hello()));
        for cut in 0..bytes.len() {
            assert!(Hello::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Hello::decode(&longer),
            Err(HelloError::Malformed("trailing bytes"))
        );
        let mut future = bytes;
        future[MAGIC.len() + 1] = 9;
        assert!(matches!(
            Hello::decode(&future),
            Err(HelloError::Protocol { theirs: 9, .. })
        ));
    }

    /// A dozen plugins' fingerprints once went past a 1,024-byte cut, so two nodes
    /// with different plugins looked alike.
    #[test]
    fn every_plugin_fingerprint_is_carried_or_start_up_refuses() {
        let fingerprint = |i: usize| format!("plugin-{i} 1.2.3 {}", "ab".repeat(32));
        let mut many = hello();
        many.plugins = (0..40).map(fingerprint).collect::<Vec<_>>().join(",");
        assert!(many.plugins.len() > 1024);
        assert_eq!(many.check_fits(), Ok(()));
        assert_eq!(Hello::decode(&many.encode()), Ok(many.clone()));
        many.plugins = (0..1000).map(fingerprint).collect::<Vec<_>>().join(",");
        let refused = many.check_fits().unwrap_err();
        assert!(refused.contains("list fewer plugins"), "{refused}");
    }

    #[test]
    fn admits_only_the_same_chain() {
        let ours = hello();
        let mut theirs = hello();
        assert_eq!(ours.admit(&theirs), Ok(()));
        // A peer in another membership epoch may hold another index.
        theirs.member = 1;
        assert_eq!(ours.admit(&theirs), Ok(()));
        theirs.genesis_hash = Hash([4; 32]);
        assert!(matches!(
            ours.admit(&theirs),
            Err(HelloError::Genesis { .. })
        ));
        theirs.chain_id = "other".into();
        assert!(matches!(ours.admit(&theirs), Err(HelloError::Chain { .. })));
        // Different plugins are admitted: the caller reports them.
        let mut plugins = hello();
        plugins.plugins.clear();
        assert_eq!(ours.admit(&plugins), Ok(()));
    }
}
