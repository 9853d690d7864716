//! The checker: what a run must never do (two honest replicas applying different
//! blocks at one height, an applied block without a valid certificate or link,
//! consensus state beyond its bounds) and what it must do once the network heals
//! (commit every entry an honest replica took, stop changing views), and the report
//! of how a run went.

use std::fmt;
use std::sync::Arc;

use super::Sim;
use crate::chain::{Block, CommitCertificate};
use crate::consensus::Tip;

/// A broken property, with where and when it broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two honest replicas applied different blocks at one height.
    Conflict {
        /// The height.
        height: u64,
        /// The replicas.
        nodes: (usize, usize),
    },
    /// An applied block whose commit certificate does not verify.
    BadCertificate {
        /// The replica.
        node: usize,
        /// The height.
        height: u64,
        /// Why.
        reason: String,
    },
    /// An applied block that does not extend the replica's previous block.
    BrokenLink {
        /// The replica.
        node: usize,
        /// The height.
        height: u64,
    },
    /// Consensus state above its bound.
    Unbounded {
        /// The replica.
        node: usize,
        /// What grew.
        what: &'static str,
        /// Its size.
        size: usize,
    },
    /// An honest replica did not commit what it should have after healing.
    NoProgress {
        /// The replica.
        node: usize,
        /// Its height at the end.
        height: u64,
        /// Entries it is missing.
        missing: usize,
    },
    /// A replica panicked.
    Panic {
        /// The panic message.
        message: String,
    },
    /// An honest replica restored from a snapshot a block no honest replica applied
    /// at that height.
    ForgedSnapshot {
        /// The replica.
        node: usize,
        /// The snapshot's height.
        height: u64,
    },
    /// An honest replica applied a block whose membership change the membership in
    /// force refuses.
    RefusedChange {
        /// The replica.
        node: usize,
        /// The height.
        height: u64,
        /// Why.
        reason: String,
    },
    /// The scenario's membership changes were not all in force at the end.
    ChangesStuck {
        /// Changes ordered.
        ordered: usize,
        /// Changes planned.
        planned: usize,
    },
    /// Views kept changing after the network healed.
    ViewChangeStorm {
        /// View changes after healing.
        changes: u64,
        /// The bound.
        bound: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// How a run went.
#[derive(Clone, Debug)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Virtual time at the end, ms.
    pub end_ms: u64,
    /// Events processed.
    pub events: u64,
    /// The highest height an honest replica applied.
    pub height: u64,
    /// The highest view an honest replica reached.
    pub view: u64,
    /// The first violation, if any.
    pub violation: Option<Violation>,
    /// What snapshot joins did.
    pub snapshots: SnapshotCounts,
    /// The membership epoch after the highest applied block.
    pub epoch: u64,
    /// Blocks applied without waiting for the disk that crashes took back.
    pub lost_applies: u64,
}

/// What the snapshot joins of a run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct SnapshotCounts {
    /// Members restored from a snapshot.
    pub restores: u64,
    /// Forged manifests and chunks refused.
    pub refused: u64,
    /// Times a member that lost its disk heard from too few others and asked again.
    pub probes_repeated: u64,
    /// Restores into a membership epoch after genesis.
    pub restores_after_changes: u64,
    /// Of those, restores above where their epoch started (the join kept the header
    /// the epoch starts above).
    pub restores_above_epoch_start: u64,
}

impl Report {
    /// The report of a run that panicked.
    pub fn panicked(scenario: String, seed: u64, message: String) -> Report {
        Report {
            scenario,
            seed,
            end_ms: 0,
            events: 0,
            height: 0,
            view: 0,
            violation: Some(Violation::Panic { message }),
            snapshots: SnapshotCounts::default(),
            epoch: 0,
            lost_applies: 0,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p ledger --features testing --bin ledger-sim -- --scenario {} --seed {}",
            self.scenario, self.seed
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.violation {
            None => write!(
                f,
                "{} seed {}: ok, height {}, epoch {}, view {}, {} events, {} virtual ms",
                self.scenario,
                self.seed,
                self.height,
                self.epoch,
                self.view,
                self.events,
                self.end_ms
            ),
            Some(violation) => write!(
                f,
                "{} seed {}: VIOLATION {} at {} virtual ms\n  replay: {}",
                self.scenario,
                self.seed,
                violation,
                self.end_ms,
                self.replay_command()
            ),
        }
    }
}

impl Sim {
    /// Performs an apply and checks it: certificate, parent link, agreement.
    pub(super) fn apply(&mut self, node: usize, block: Arc<Block>, certificate: CommitCertificate) {
        let height = block.header.height;
        let hash = block.hash();
        let state = &mut self.nodes[node];
        let honest = state.honest;
        let links = block.header.prev_hash == state.tip.header.hash()
            && height == state.tip.header.height + 1;
        let mut log = state.tip.log.clone();
        for entry in &block.entries {
            let id = entry.id();
            state.ids.insert(id);
            state.log_ids.push(id);
            log.append(crate::chain::merkle::leaf_hash(id.as_bytes()), |_, _, _| {});
        }
        state.tip = Tip {
            header: block.header,
            log,
        };
        // Refused, the block changes nothing; the checker below says so.
        let _ = state
            .membership
            .apply_block(&self.spec, height, &block.entries);
        state.chain.insert(height, (block, certificate.clone()));
        if !honest {
            return;
        }
        if !links {
            self.violation = Some(Violation::BrokenLink { node, height });
            return;
        }
        // The first honest replica to apply a height moves the run's membership on
        // (any other must agree with its block): a change due there starts an epoch
        // whose members alone certify from there.
        let first = !self.applied.contains_key(&height);
        if first && self.track.advance_to(height) {
            let base = self.applied.get(&(height - 1)).map(|(hash, _)| *hash);
            let genesis = &self.epochs[&1];
            let mut verifier = genesis.for_epoch(
                &self.spec.chain_hash(),
                &self.track,
                height - 1,
                base.unwrap_or_default(),
            );
            verifier.quorum = self.scenario.flaws.quorum(&verifier);
            self.epochs.insert(height, verifier);
        }
        // Every certificate is checked against the membership in force at its height,
        // with the quorum the replicas count with: a flaw that weakens it must show up
        // as the fork it allows, not merely as a certificate one vote short.
        // Signatures go through the run's memo, as most were checked when their
        // COMMIT arrived.
        let verifier = self
            .epochs
            .range(..=height)
            .next_back()
            .map(|(_, verifier)| verifier)
            .expect("epoch 0 orders from height 1");
        if let Err(error) = verifier.check_commit(&certificate, height, &hash) {
            self.violation = Some(Violation::BadCertificate {
                node,
                height,
                reason: error.to_string(),
            });
            return;
        }
        match self.applied.get(&height) {
            Some((known, other)) if *known != hash => {
                self.violation = Some(Violation::Conflict {
                    height,
                    nodes: (*other, node),
                });
            }
            Some(_) => {}
            None => {
                self.applied.insert(height, (hash, node));
                let block = &self.nodes[node].chain[&height].0;
                let reconfigures = block.entries.iter().any(|e| e.is_reconfiguration());
                match self.track.apply_block(&self.spec, height, &block.entries) {
                    Ok(()) if reconfigures => {
                        self.changes_ordered += 1;
                        self.prove_change(node, height);
                    }
                    Ok(()) => {}
                    Err(error) => {
                        self.violation = Some(Violation::RefusedChange {
                            node,
                            height,
                            reason: error.to_string(),
                        })
                    }
                }
            }
        }
    }

    /// Records the change in `node`'s block at `height` with its receipt, built from
    /// what the node holds (every id of the log, the block and its certificate).
    fn prove_change(&mut self, node: usize, height: u64) {
        let state = &self.nodes[node];
        let (block, certificate) = &state.chain[&height];
        let size = block.header.log_size;
        let mut log = crate::chain::merkle::MemoryLog::new();
        for id in &state.log_ids[..size as usize] {
            log.push(id.as_bytes());
        }
        let first = size - block.entries.len() as u64;
        for (offset, entry) in block.entries.iter().enumerate() {
            if !entry.is_reconfiguration() {
                continue;
            }
            let index = first + offset as u64;
            let Ok(inclusion_proof) = crate::chain::merkle::inclusion_proof(&log, index, size)
            else {
                continue;
            };
            self.change_proofs.push(crate::chain::ChangeProof {
                entry: entry.clone(),
                receipt: crate::chain::Receipt {
                    entry_id: entry.id(),
                    log_index: index,
                    header: block.header,
                    inclusion_proof,
                    certificate: certificate.clone(),
                },
            });
        }
    }

    /// The consensus state of every honest replica stays within fixed bounds.
    pub(super) fn check_bounds(&mut self) {
        // Every node a change may make a member.
        let n = self.keys.len();
        let window = 2 * self.spec.params.checkpoint_interval as usize;
        for node in 0..self.nodes.len() {
            let state = &self.nodes[node];
            let Some(replica) = state.replica.as_ref().filter(|_| state.honest) else {
                continue;
            };
            let footprint = replica.footprint();
            let limits = [
                ("slots", footprint.slots, 2 * window + 2),
                ("blocks", footprint.blocks, 4 * window * n),
                (
                    "checkpoint votes",
                    footprint.checkpoint_votes,
                    n * (window / 4 + 3),
                ),
                // One for the current view and one for a higher view per member.
                ("view changes", footprint.view_changes, 2 * n),
                ("pending entries", footprint.pending, self.scenario.entries),
            ];
            for (what, size, bound) in limits {
                if size > bound {
                    self.violation = Some(Violation::Unbounded { node, what, size });
                    return;
                }
            }
        }
    }

    /// After healing, every honest replica commits every entry given to an honest
    /// replica, and views settle.
    pub(super) fn check_liveness(&mut self) {
        let planned = self.scenario.changes.len();
        let due = self.track.pending.as_ref().map(|p| p.in_force_from - 1);
        let highest = self.applied.keys().next_back().copied().unwrap_or(0);
        if self.changes_ordered < planned || due.is_some_and(|last| highest < last) {
            self.violation = Some(Violation::ChangesStuck {
                ordered: self.changes_ordered,
                planned,
            });
            return;
        }
        for node in self.honest().collect::<Vec<_>>() {
            let state = &self.nodes[node];
            // Only the members in force at the end order: the others follow.
            let id = self.node_ids[usize::from(state.member)];
            if !self
                .track
                .members
                .as_slice()
                .iter()
                .any(|m| m.node_id == id)
            {
                continue;
            }
            let missing = self
                .must_commit
                .iter()
                .filter(|id| !state.ids.contains(id))
                .count();
            if missing > 0 || state.replica.is_none() {
                self.violation = Some(Violation::NoProgress {
                    node,
                    height: state.tip.header.height,
                    missing,
                });
                return;
            }
        }
        let f = ((self.scenario.members - 1) / 3) as u64;
        let bound = 2 * (f + 1) + 2;
        // Views start again at 0 in a new epoch.
        let changes = self
            .max_view()
            .saturating_sub(self.view_at_heal.unwrap_or(0));
        if changes > bound {
            self.violation = Some(Violation::ViewChangeStorm { changes, bound });
        }
    }
}
