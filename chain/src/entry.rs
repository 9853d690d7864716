//! Entries (the ledger's transactions) and their canonical encoding.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::codec::Reader;
use super::{ChainError, Hash};

const ENTRY_VERSION: u8 = 1;
const FLAG_AUTHORED: u8 = 0b0000_0001;
/// The data is a membership change ([`super::membership::Reconfiguration`]), not a
/// client's.
const FLAG_RECONFIGURATION: u8 = 0b0000_0010;
/// Largest reconfiguration entry data: a change and 256 admin signatures fit.
const MAX_RECONFIGURATION_BYTES: usize = 32 << 10;
/// Fixed bytes before the data: version, flags, data length.
pub const ENTRY_OVERHEAD: usize = 1 + 1 + 4;
/// Domain separator of entry signatures; never reused for another message kind.
const SIGNATURE_DOMAIN: &[u8] = b"ledger/v1/entry-signature";

/// An entry's optional author: an ed25519 key and its signature over the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Author {
    /// The author's ed25519 public key.
    pub public_key: [u8; 32],
    /// Signature over [`Entry::signing_digest`].
    pub signature: [u8; 64],
}

/// Whose data an entry holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EntryKind {
    /// A client's opaque data.
    #[default]
    Client,
    /// A membership change signed by the chain's admins (never authored).
    Reconfiguration,
}

/// An entry of the log: a client's opaque data, optionally signed by its author, or a
/// membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The payload. Its size limit is a chain parameter (genesis `max_entry_bytes`).
    pub data: Vec<u8>,
    /// Who signed it, if anyone.
    pub author: Option<Author>,
    /// What the data is.
    pub kind: EntryKind,
}

/// The data's length as encoded and signed. It cannot exceed u32 for any entry that
/// passes the size check; a larger one saturates, which still yields a digest no valid
/// entry shares.
fn length(data: &[u8]) -> [u8; 4] {
    u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes()
}

impl Entry {
    /// An unsigned entry.
    pub fn new(data: impl Into<Vec<u8>>) -> Entry {
        Entry {
            data: data.into(),
            author: None,
            kind: EntryKind::Client,
        }
    }

    /// A reconfiguration entry holding `data`, an encoded
    /// [`super::membership::Reconfiguration`].
    pub fn reconfiguration(data: Vec<u8>) -> Entry {
        Entry {
            data,
            author: None,
            kind: EntryKind::Reconfiguration,
        }
    }

    /// Whether the entry is a membership change.
    pub fn is_reconfiguration(&self) -> bool {
        self.kind == EntryKind::Reconfiguration
    }

    /// An entry signed by `key` for the chain `chain_hash`.
    pub fn signed(data: impl Into<Vec<u8>>, key: &SigningKey, chain_hash: &Hash) -> Entry {
        let data = data.into();
        let digest = Entry::signing_digest(chain_hash, &data);
        let signature = key.sign(digest.as_bytes()).to_bytes();
        Entry {
            data,
            author: Some(Author {
                public_key: key.verifying_key().to_bytes(),
                signature,
            }),
            kind: EntryKind::Client,
        }
    }

    /// What an author signs: the data bound to one chain, so a signed entry cannot be
    /// replayed on another chain. SHA-256(domain ‖ chain hash ‖ u32 length ‖ data).
    pub fn signing_digest(chain_hash: &Hash, data: &[u8]) -> Hash {
        Hash::digest_parts(&[SIGNATURE_DOMAIN, chain_hash.as_bytes(), &length(data), data])
    }

    /// Length of [`Entry::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        ENTRY_OVERHEAD + self.data.len() + if self.author.is_some() { 96 } else { 0 }
    }

    /// Appends the canonical encoding (docs/FORMAT.md, "Entry").
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.head());
        out.extend_from_slice(&self.data);
        if let Some(author) = &self.author {
            out.extend_from_slice(&author.public_key);
            out.extend_from_slice(&author.signature);
        }
    }

    /// The encoding's first bytes: version, flags and the data's length.
    fn head(&self) -> [u8; ENTRY_OVERHEAD] {
        let mut flags = if self.author.is_some() {
            FLAG_AUTHORED
        } else {
            0
        };
        if self.is_reconfiguration() {
            flags |= FLAG_RECONFIGURATION;
        }
        let [a, b, c, d] = length(&self.data);
        [ENTRY_VERSION, flags, a, b, c, d]
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// The entry id: SHA-256 of the canonical encoding, hashed in its parts (a
    /// member works out every entry's id several times, and a copy costs as much as
    /// the hashing of a small entry).
    pub fn id(&self) -> Hash {
        let head = self.head();
        match &self.author {
            None => Hash::digest_parts(&[&head, &self.data]),
            Some(author) => {
                Hash::digest_parts(&[&head, &self.data, &author.public_key, &author.signature])
            }
        }
    }

    /// Decodes exactly one entry from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Entry, ChainError> {
        let mut reader = Reader::new(bytes, "entry");
        let entry = Entry::read(&mut reader)?;
        reader.finish()?;
        Ok(entry)
    }

    /// Reads one entry from `reader`, leaving what follows it.
    pub fn read(reader: &mut Reader<'_>) -> Result<Entry, ChainError> {
        let version = reader.u8()?;
        if version != ENTRY_VERSION {
            return Err(ChainError::UnsupportedVersion {
                what: "entry",
                version: version.into(),
            });
        }
        let flags = reader.u8()?;
        if flags & !(FLAG_AUTHORED | FLAG_RECONFIGURATION) != 0 {
            return Err(ChainError::Malformed {
                what: "entry",
                reason: "unknown flag bits set",
            });
        }
        if flags == FLAG_AUTHORED | FLAG_RECONFIGURATION {
            return Err(ChainError::Malformed {
                what: "entry",
                reason: "a reconfiguration has admin signatures, not an author",
            });
        }
        let kind = match flags & FLAG_RECONFIGURATION {
            0 => EntryKind::Client,
            _ => EntryKind::Reconfiguration,
        };
        let len = reader.u32()? as usize;
        let data = reader.take(len)?.to_vec();
        let author = if flags & FLAG_AUTHORED != 0 {
            Some(Author {
                public_key: reader.array()?,
                signature: reader.array()?,
            })
        } else {
            None
        };
        Ok(Entry { data, author, kind })
    }

    /// Checks what an entry can be checked for on its own: the size limit and, when it
    /// has an author, the signature (strict verification: no malleable signatures, no
    /// small-order keys).
    /// A reconfiguration's limit is its own; its admin signatures are checked against
    /// the membership in force ([`super::membership::Membership::check`]).
    pub fn verify(&self, chain_hash: &Hash, max_entry_bytes: u32) -> Result<(), ChainError> {
        if self.is_reconfiguration() {
            if self.data.len() > MAX_RECONFIGURATION_BYTES {
                return Err(ChainError::Malformed {
                    what: "reconfiguration",
                    reason: "larger than a change and 256 admin signatures",
                });
            }
            return Ok(());
        }
        if self.data.len() > max_entry_bytes as usize {
            return Err(ChainError::EntryTooLarge {
                size: self.data.len(),
                limit: max_entry_bytes,
            });
        }
        if let Some(author) = &self.author {
            let key = VerifyingKey::from_bytes(&author.public_key)
                .map_err(|_| ChainError::BadPublicKey)?;
            let signature = Signature::from_bytes(&author.signature);
            let digest = Entry::signing_digest(chain_hash, &self.data);
            key.verify_strict(digest.as_bytes(), &signature)
                .map_err(|_| ChainError::BadSignature { what: "entry" })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn encoding_round_trips_and_is_fixed_layout() {
        let chain = Hash::digest(b"chain");
        for entry in [
            Entry::new(b"hello".to_vec()),
            Entry::signed(b"hi".to_vec(), &key(1), &chain),
        ] {
            let bytes = entry.encode();
            assert_eq!(bytes.len(), entry.encoded_len());
            assert_eq!(Entry::decode(&bytes).unwrap(), entry);
        }
        // The id, hashed in parts, is the digest of the whole encoding.
        for entry in [
            Entry::new(Vec::new()),
            Entry::new(b"hello".to_vec()),
            Entry::signed(b"hi".to_vec(), &key(1), &chain),
            Entry::reconfiguration(b"change".to_vec()),
        ] {
            assert_eq!(entry.id(), Hash::digest(&entry.encode()));
        }
        assert_eq!(
            Entry::new(b"ab".to_vec()).encode(),
            [1, 0, 0, 0, 0, 2, b'a', b'b']
        );
    }

    #[test]
    fn decode_refuses_truncated_trailing_and_unknown_flags() {
        let bytes = Entry::new(b"abc".to_vec()).encode();
        assert!(Entry::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(Entry::decode(&long).is_err());
        let mut flags = bytes.clone();
        flags[1] = 0b100;
        assert!(Entry::decode(&flags).is_err());
        // A reconfiguration carries no author.
        let mut both = Entry::signed(b"abc".to_vec(), &key(1), &Hash::ZERO).encode();
        both[1] = 0b11;
        assert!(Entry::decode(&both).is_err());
        // The kind is part of the id: client data that looks like a change is another entry.
        let client = Entry::new(b"abc".to_vec());
        let change = Entry::reconfiguration(b"abc".to_vec());
        assert_ne!(client.id(), change.id());
        assert_eq!(Entry::decode(&change.encode()).unwrap(), change);
        let mut version = bytes;
        version[0] = 9;
        assert!(matches!(
            Entry::decode(&version),
            Err(ChainError::UnsupportedVersion { .. })
        ));
        // A length far beyond the input must not allocate or panic.
        assert!(Entry::decode(&[1, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn signatures_bind_data_key_and_chain() {
        let chain = Hash::digest(b"chain");
        let entry = Entry::signed(b"payload".to_vec(), &key(7), &chain);
        entry.verify(&chain, 1024).unwrap();

        let other_chain = Hash::digest(b"other");
        assert_eq!(
            entry.verify(&other_chain, 1024),
            Err(ChainError::BadSignature { what: "entry" })
        );

        let mut tampered = entry.clone();
        tampered.data[0] ^= 1;
        assert!(tampered.verify(&chain, 1024).is_err());

        let mut wrong_key = entry.clone();
        wrong_key.author.as_mut().unwrap().public_key = key(8).verifying_key().to_bytes();
        assert!(wrong_key.verify(&chain, 1024).is_err());
    }

    #[test]
    fn size_limit_is_enforced() {
        let chain = Hash::ZERO;
        Entry::new(vec![0; 16]).verify(&chain, 16).unwrap();
        assert_eq!(
            Entry::new(vec![0; 17]).verify(&chain, 16),
            Err(ChainError::EntryTooLarge {
                size: 17,
                limit: 16
            })
        );
    }
}
