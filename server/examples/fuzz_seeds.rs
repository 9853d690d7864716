//! Writes the seed corpora of the fuzz targets (`fuzz/README.md`): valid encodings
//! of everything the targets decode, from a small chain built the way the tests
//! build theirs.
//!
//! ```text
//! cargo run -p ledger --features testing --example fuzz_seeds -- fuzz/corpus
//! ```
//!
//! Each file is named after its content's hash, so running it again adds nothing
//! twice.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ed25519_dalek::Signer;
use ledger::api::types::{ReceiptView, SubmitRequest};
use ledger::chain::{Change, Entry, Membership, Reconfiguration};
use ledger::consensus::{
    checkpoint_digest, pre_prepare_digest, prepare_digest, AcceptedBlock, CheckpointCertificate,
    DurableSlot, MemberIndex, Message, Payload, PreparedCertificate, Record, Vote,
};
use ledger::net::{Hello, Wire};
use ledger::storage::{Store, StoreOptions};
use ledger::testing::{certify, entries, key, next_block, spec_checkpointing};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: fuzz_seeds CORPUS_DIR");
    };
    let out = PathBuf::from(out);
    let keys: Vec<_> = (1..=4).map(key).collect();
    let spec = spec_checkpointing(&keys, 1, 2);
    let chain_hash = spec.chain_hash();
    let scratch = std::env::temp_dir().join(format!("fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let store = Store::open(&scratch.join("seeds.redb"), &spec, StoreOptions::default())?;
    let author = key(42);
    let mut blocks = Vec::new();
    for round in 0..4u64 {
        let (tip, log) = store.tip_with_log()?;
        let mut batch = entries(round, 3, 24);
        batch.push(Entry::signed(
            format!("signed in round {round}").into_bytes(),
            &author,
            &chain_hash,
        ));
        let block = next_block(&tip, &log, batch, 1);
        let certificate = certify(&keys[..3], &block);
        store.apply_block(&block, &certificate)?;
        blocks.push((block, certificate));
    }

    let write = |target: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        let name = ledger::chain::Hash::digest(bytes).to_hex();
        let path: &Path = &dir.join(&name[..16]);
        std::fs::write(path, bytes).with_context(|| path.display().to_string())
    };
    for (block, certificate) in &blocks {
        write("block", &block.encode())?;
        write("header", &block.header.encode())?;
        write("plugin_views", &block.encode())?;
        write("certificate", &certificate.encode())?;
        for entry in &block.entries {
            write("entry", &entry.encode())?;
            write("plugin_views", &entry.encode())?;
            let request = SubmitRequest::from_entry(entry);
            write("submit_json", serde_json::to_string(&request)?.as_bytes())?;
            let (_, receipt) = store
                .entry_with_receipt(&entry.id())?
                .context("a committed entry has a receipt")?;
            let view = ReceiptView::from(&receipt);
            write("receipt_json", serde_json::to_string(&view)?.as_bytes())?;
        }
        let messages = [
            Payload::PrePrepare {
                view: 0,
                block: block.clone().into(),
            },
            Payload::Prepare {
                view: 0,
                height: block.header.height,
                hash: block.hash(),
            },
            Payload::Commit {
                view: 0,
                height: block.header.height,
                hash: block.hash(),
            },
            Payload::Checkpoint {
                height: block.header.height,
                hash: block.hash(),
            },
        ];
        // A checkpoint certificate and a durable slot over this block.
        let hash = block.hash();
        let height = block.header.height;
        let vote = |member: usize, digest: ledger::chain::Hash| Vote {
            member: member as MemberIndex,
            signature: keys[member].sign(digest.as_bytes()).to_bytes(),
        };
        let checkpoint = CheckpointCertificate {
            height,
            hash,
            votes: (0..3)
                .map(|m| vote(m, checkpoint_digest(&chain_hash, height, &hash)))
                .collect(),
        };
        write("checkpoint", &checkpoint.encode())?;
        let pre_prepare = vote(0, pre_prepare_digest(&chain_hash, 0, height, &hash));
        let slot = DurableSlot {
            accepted: Some(AcceptedBlock {
                view: 0,
                block: block.clone().into(),
                signature: pre_prepare.signature,
            }),
            prepared: Some(PreparedCertificate {
                view: 0,
                header: block.header,
                votes: std::iter::once(pre_prepare)
                    .chain((1..3).map(|m| vote(m, prepare_digest(&chain_hash, 0, height, &hash))))
                    .collect(),
            }),
        };
        write("durable", &slot.encode())?;
        // The same records in the store's consensus log, a frame each.
        store.persist(&[Record::Accepted {
            view: 0,
            block: block.clone().into(),
            signature: pre_prepare.signature,
        }])?;
        if let Some(prepared) = slot.prepared {
            store.persist(&[Record::Prepared(prepared)])?;
        }
        for payload in messages {
            let message = Message::sign(&chain_hash, 1, &keys[1], payload);
            write("message", &message.encode())?;
            let wire = Wire::Consensus(message).encode();
            let mut frame = (wire.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&wire);
            write("wire", &wire)?;
            write("frame", &frame)?;
        }
        for wire in [
            Wire::Committed {
                block: block.clone(),
                certificate: certificate.clone(),
            },
            Wire::Block(block.clone()),
            Wire::FetchCommitted {
                after: block.header.height,
                entered_view: 1,
            },
            Wire::FetchSnapshot { height: 0 },
            Wire::FetchChunk {
                height: block.header.height,
                index: 0,
            },
        ] {
            write("wire", &wire.encode())?;
        }
    }
    write("chain_spec", &spec.encode())?;
    write("genesis_toml", spec.to_toml().as_bytes())?;
    let membership = Membership::genesis(&spec);
    write("membership", &membership.encode())?;
    let change = Change::Remove {
        public_key: keys[3].verifying_key(),
    };
    let mut reconfiguration = Reconfiguration::new(membership.epoch, change)?;
    reconfiguration.sign(&author, &chain_hash);
    write("reconfiguration", &reconfiguration.encode())?;
    let hello = Hello {
        protocol: ledger::net::PROTOCOL_VERSION,
        chain_id: spec.chain_id.clone(),
        genesis_hash: spec.genesis_block().hash(),
        member: 2,
        plugins: "tx-policy 0.1.0 00ff".into(),
    };
    write("hello", &hello.encode())?;

    let tip = store.tip()?.height;
    for height in (2..=tip).step_by(2) {
        for level in [4, 5] {
            let Some(manifest) = store.snapshot_manifest(height, level, 2)? else {
                continue;
            };
            let encoded = manifest.encode();
            write("manifest", &encoded)?;
            // The same with a membership change (its checks are not the decoder's).
            let (_, _, receipt) = ledger::testing::receipt(1);
            let change = Reconfiguration::new(
                0,
                Change::Remove {
                    public_key: key(4).verifying_key(),
                },
            )?;
            let mut changed = manifest.clone();
            changed.changes.push(ledger::chain::ChangeProof {
                entry: change.to_entry(),
                receipt,
            });
            write("manifest", &changed.encode())?;
            for index in 0..manifest.chunks() {
                let chunk = store.snapshot_chunk(&manifest, index)?;
                let mut input = (encoded.len() as u32).to_be_bytes().to_vec();
                input.extend_from_slice(&encoded);
                input.extend_from_slice(&chunk);
                write("chunk", &input)?;
            }
        }
    }
    drop(store);
    // The log as written, then cut after its last frame (its room is zeros).
    let log = std::fs::read(Store::log_path(&scratch.join("seeds.redb")))?;
    let (_, end) = ledger::storage::read_log(&log)?;
    write("consensus_log", &log[..end])?;
    write("consensus_log", &log[..(end + 64).min(log.len())])?;
    std::fs::remove_dir_all(&scratch)?;
    println!("wrote seeds under {}", out.display());
    Ok(())
}
