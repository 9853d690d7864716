//! Snapshot transfer in the simulator: a replica whose disk was lost joins again as
//! `ledgerd join` does. Every running member it reaches offers the snapshot of its
//! stable checkpoint (a Byzantine [`Behaviour::LyingSnapshots`] member a forged
//! one); the joiner keeps the manifests that verify against the genesis members
//! (the real [`Manifest::verify`]), takes the highest one f + 1 members offer alike
//! (else the highest), checks each chunk with [`Manifest::check_chunk`] and takes a
//! failed one from the next member offering the snapshot. The transfer takes virtual
//! time and a crash may cut it short; then the node starts from the restored state:
//! block `h` and its certificate, the header below, every id, no consensus state.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::{Behaviour, Sim, Violation};
use crate::chain::snapshot::{self, Manifest, MIN_TILE_LEVEL};
use crate::chain::{Block, CommitCertificate, CompactRange, Hash, Membership, MembershipHistory};
use crate::consensus::{Durable, Tip};

/// What a finished join hands the node.
pub(super) struct Restored {
    block: Arc<Block>,
    certificate: CommitCertificate,
    below: crate::chain::Header,
    ids: Vec<Hash>,
    abstain_through: u64,
    /// The membership after h (with a change on its way).
    membership: Membership,
    epoch_base: Option<crate::chain::Header>,
}

/// A snapshot as one member offers it: its manifest and its chunks.
struct Offer {
    source: usize,
    manifest: Manifest,
    chunks: Vec<Vec<u8>>,
}

impl Sim {
    /// Forgets everything `node` persisted.
    pub(super) fn wipe(&mut self, node: usize) {
        let genesis = self.spec.genesis_block();
        let state = &mut self.nodes[node];
        state.durable = Durable::genesis(genesis.hash());
        state.chain.clear();
        state.base = None;
        state.log_ids.clear();
        state.ids.clear();
        state.tip = Tip {
            header: genesis.header,
            log: CompactRange::new(),
        };
        state.membership = Membership::genesis(&self.spec);
        state.epoch_base = None;
        state.wiped = true;
        state.unsynced = (0, None);
    }

    /// Joins `node` (down, its disk lost) from the snapshots the others offer; with
    /// none to be had it starts from genesis and replays, as a real node does.
    pub(super) fn join(&mut self, node: usize) {
        let member = self.nodes[node].member;
        let key = self.keys[usize::from(member)].verifying_key();
        let is = |members: &crate::chain::Members, key: &ed25519_dalek::VerifyingKey| {
            members.as_slice().iter().any(|m| m.public_key == *key)
        };
        // The memberships the chain went through, as the members' proofs show them
        // (checked from the genesis file): the members of the one in force and of
        // the one after a change on its way are asked.
        let history = MembershipHistory::verify(&self.spec, &self.change_proofs)
            .unwrap_or_else(|_| MembershipHistory::genesis(&self.spec));
        let groups = crate::join::asked_memberships(&history);
        let voted = crate::join::ever_member(&history, &key);
        let mut offers = Vec::new();
        // The tips the members show, each with its certificate: they bound the
        // heights this member may have voted at before it lost its disk.
        let mut heights = Vec::new();
        for source in 0..self.nodes.len() {
            if self.nodes[source].member == member || self.nodes[source].replica.is_none() {
                continue;
            }
            if self.round_trip(node, source).is_none() {
                continue;
            }
            let source_key = self.keys[usize::from(self.nodes[source].member)].verifying_key();
            if groups.iter().any(|members| is(members, &source_key)) {
                // An honest member shows its tip, or a prepared certificate above
                // it: blocks applied since its disk last synced may be gone, not
                // their prepared records. A liar cannot show a height beyond the
                // chain (it needs a certificate): it hides how far it got, saying
                // it holds nothing, or shows the highest certificate any member
                // holds, to make the joiner abstain as long as it can.
                let height = match self.lies_about_snapshots(source) {
                    true if self.rng.chance(0.5) => (0..self.nodes.len())
                        .map(|n| self.shown(n))
                        .max()
                        .unwrap_or(0),
                    true => 0,
                    false => self.shown(source),
                };
                heights.push((source_key, height));
            }
            if let Some(offer) = self.offer(source) {
                offers.push(offer);
            }
        }
        // Too few answers of either membership might all come from members that
        // never saw its votes: it asks again a second later, as a real node does. A
        // key never a member has nothing to ask.
        let enough = groups.iter().all(|members| {
            let others = members.as_slice().iter().filter(|m| m.public_key != key);
            let heard = heights.iter().filter(|(k, _)| is(members, k)).count();
            heard >= crate::consensus::Config::abstain_answers(members).min(others.count())
        });
        if voted && !enough {
            self.snapshots.probes_repeated += 1;
            return self.schedule(self.now + 1000, super::Event::Restart { node });
        }
        let seen = heights.iter().map(|(_, height)| *height).max().unwrap_or(0);
        let abstain_through = match voted {
            true => {
                crate::consensus::Config::abstain_bound(&self.spec, &history.last().members, seen)
            }
            false => 0,
        };
        let offered = offers.len();
        let unchecked = self.scenario.unchecked_snapshots;
        offers.retain(|offer| unchecked || offer.manifest.verify(&self.spec).is_ok());
        self.snapshots.refused += (offered - offers.len()) as u64;
        // f + 1 of the membership that certified the snapshot.
        let backed = |m: &Manifest| {
            MembershipHistory::verify(&self.spec, &m.changes)
                .map_or(self.spec.members.max_faulty(), |history| {
                    history.at(m.height()).members.max_faulty()
                })
                + 1
        };
        let support = |m: &Manifest| {
            offers
                .iter()
                .filter(|o| m.same_snapshot(&o.manifest))
                .count()
                >= backed(m)
        };
        let Some(best) = offers
            .iter()
            .max_by_key(|offer| (support(&offer.manifest), offer.manifest.height()))
            .map(|offer| offer.manifest.clone())
        else {
            // No snapshot: it replays the chain from genesis, abstaining all the same.
            let state = &mut self.nodes[node];
            state.wiped = false;
            state.durable.abstain_through = abstain_through;
            return self.restart(node);
        };
        let sources: Vec<&Offer> = offers
            .iter()
            .filter(|offer| offer.manifest.same_snapshot(&best))
            .collect();
        let mut ids = Vec::with_capacity(best.header.log_size as usize);
        let (mut trips, mut refused) = (0, 0);
        for index in 0..best.chunks() {
            let start = self.rng.below(sources.len() as u64) as usize;
            let checked = (0..sources.len()).find_map(|turn| {
                trips += 1;
                let offer = sources[(start + turn) % sources.len()];
                let bytes = &offer.chunks[index as usize];
                let checked = match unchecked {
                    true => bytes
                        .chunks(32)
                        .map(|id| id.try_into().ok().map(Hash))
                        .collect::<Option<Vec<_>>>(),
                    false => best.check_chunk(index, bytes).ok(),
                };
                refused += u64::from(checked.is_none());
                checked
            });
            self.snapshots.refused += std::mem::take(&mut refused);
            match checked {
                Some(chunk) => ids.extend(chunk),
                // No member served this chunk whole: the join fails and is tried
                // again at the next start.
                None => return self.retry_join(node),
            }
        }
        // Block h from a source offering the snapshot; the ids must hold its entries.
        let Some((block, _)) = sources
            .iter()
            .find_map(|offer| self.nodes[offer.source].chain.get(&best.height()).cloned())
            .filter(|(block, _)| block.hash() == best.header.hash())
        else {
            return self.retry_join(node);
        };
        let below = best.recent[best.recent.len() - 1];
        // The membership after h, as the manifest's changes establish it, and the
        // header its epoch starts above when that lies below the snapshot: fetched
        // with its certificate, as a real join does.
        let Ok(known) = best.verify(&self.spec) else {
            return self.retry_join(node);
        };
        let membership = known.epochs().last().cloned().expect("never empty");
        let base = known.epoch_base(best.height());
        let epoch_base = match base > 0 && base < below.height {
            true => match sources
                .iter()
                .find_map(|offer| self.nodes[offer.source].chain.get(&base))
            {
                Some((block, _)) => Some(block.header),
                None => return self.retry_join(node),
            },
            false => None,
        };
        let start = below.log_size as usize;
        let holds = ids.get(start..).is_some_and(|tail| {
            tail.len() == block.entries.len()
                && tail
                    .iter()
                    .zip(&block.entries)
                    .all(|(id, entry)| *id == entry.id())
        });
        if !holds {
            return self.retry_join(node);
        }
        // A crash during the transfer leaves the node to try again later.
        if self.rng.chance(0.2) {
            return self.retry_join(node);
        }
        let (low, high) = self.scenario.network.delay_ms;
        let took = trips * (low + high) + self.rng.below(100);
        let life = self.nodes[node].lives;
        let restored = Box::new(Restored {
            block,
            certificate: best.certificate.clone(),
            below,
            ids,
            abstain_through,
            membership,
            epoch_base,
        });
        self.schedule(
            self.now + took,
            super::Event::Restored {
                node,
                life,
                restored,
            },
        );
    }

    fn retry_join(&mut self, node: usize) {
        let back = self.now + 100 + self.rng.below(500);
        let at = back.min(self.heal_at).max(self.now);
        self.schedule(at, super::Event::Restart { node });
    }

    /// Starts `node` from a finished join, unless it crashed meanwhile.
    pub(super) fn restored(&mut self, node: usize, life: u64, restored: Restored) {
        if self.nodes[node].lives != life || self.nodes[node].replica.is_some() {
            return;
        }
        let Restored {
            block,
            certificate,
            below,
            ids,
            abstain_through,
            membership,
            epoch_base,
        } = restored;
        let height = block.header.height;
        let hash = block.hash();
        match self.applied.get(&height) {
            Some((known, _)) if *known != hash => {
                self.violation = Some(Violation::ForgedSnapshot { node, height });
                return;
            }
            Some(_) => {}
            None => {
                self.applied.insert(height, (hash, node));
            }
        }
        self.snapshots.restores += 1;
        let state = &mut self.nodes[node];
        state.tip = Tip {
            header: block.header,
            log: super::log_of(&ids),
        };
        state.ids = ids.iter().copied().collect::<HashSet<_>>();
        state.log_ids = ids;
        state.base = Some(below);
        // A restore's writes are durable.
        state.unsynced = (0, None);
        state.chain = BTreeMap::from([(height, (block, certificate))]);
        let mut ordering = membership.clone();
        ordering.advance_to(height + 1);
        self.snapshots.restores_after_changes += u64::from(ordering.epoch > 0);
        self.snapshots.restores_above_epoch_start += u64::from(epoch_base.is_some());
        let state = &mut self.nodes[node];
        state.membership = membership;
        state.epoch_base = epoch_base;
        state.wiped = false;
        state.durable.abstain_through = abstain_through;
        self.restart(node);
    }

    /// The height `node` shows a member that lost its disk: its tip, or the height
    /// of the highest prepared certificate it holds (`Store::highest_prepared`).
    fn shown(&self, node: usize) -> u64 {
        let state = &self.nodes[node];
        let prepared = state.durable.highest_prepared();
        let prepared = prepared.map_or(0, |certificate| certificate.header.height);
        state.tip.header.height.max(prepared)
    }

    fn lies_about_snapshots(&self, source: usize) -> bool {
        let member = self.nodes[source].member;
        self.scenario
            .byzantine
            .iter()
            .any(|(liar, behaviour)| *liar == member && *behaviour == Behaviour::LyingSnapshots)
    }

    /// The snapshot `source` offers: that of its stable checkpoint, if it holds the
    /// block there and the header below; a liar forges one.
    fn offer(&mut self, source: usize) -> Option<Offer> {
        let liar = self.lies_about_snapshots(source);
        let state = &self.nodes[source];
        let height = state.replica.as_ref()?.stable_checkpoint().height;
        let (block, certificate) = state.chain.get(&height)?;
        let below = match state.chain.get(&(height - 1)) {
            Some((block, _)) => block.header,
            None => state.base.filter(|header| header.height == height - 1)?,
        };
        let log_size = block.header.log_size;
        let ids = &state.log_ids[..log_size as usize];
        let level = MIN_TILE_LEVEL;
        let tile = |index: u64| {
            let range = snapshot::tile_range(log_size, level, index);
            &ids[range.start as usize..range.end as usize]
        };
        let tiles = snapshot::tile_count(log_size, level);
        let mut offer = Offer {
            source,
            manifest: Manifest {
                chain_hash: self.spec.chain_hash(),
                header: block.header,
                certificate: certificate.clone(),
                changes: self
                    .change_proofs
                    .iter()
                    .filter(|change| change.receipt.header.height <= height)
                    .cloned()
                    .collect(),
                recent: vec![below],
                tile_level: level,
                tile_roots: (0..tiles).map(|i| snapshot::tile_root(tile(i))).collect(),
            },
            chunks: (0..tiles)
                .map(|i| tile(i).iter().flat_map(|id| id.0).collect())
                .collect(),
        };
        if liar {
            self.forge(&mut offer);
        }
        Some(offer)
    }

    /// Turns an honest offer into one of the lies a Byzantine server can tell.
    fn forge(&mut self, offer: &mut Offer) {
        let manifest = &mut offer.manifest;
        match self.rng.below(4) {
            // A certificate short of a quorum.
            0 => {
                let keep = self.quorum.saturating_sub(1);
                manifest.certificate.signatures.truncate(keep);
            }
            // A tile root that does not fold into the log root.
            1 => {
                if let Some(root) = manifest.tile_roots.first_mut() {
                    root.0[0] ^= 1;
                }
            }
            // A header of its own making, further on, certified by itself alone.
            2 => {
                let key = &self.keys[usize::from(self.nodes[offer.source].member)];
                manifest.header.height += self.spec.params.checkpoint_interval;
                let block = Block {
                    header: manifest.header,
                    entries: Vec::new(),
                };
                manifest.certificate = crate::testing::certify(std::slice::from_ref(key), &block);
            }
            // A good manifest whose chunk is corrupted.
            _ => {
                if let Some(byte) = offer.chunks.first_mut().and_then(|chunk| chunk.first_mut()) {
                    *byte ^= 1;
                }
            }
        }
    }
}
