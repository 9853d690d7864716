//! The checker: what a run must never do (two honest replicas applying different
//! blocks at one height, an applied block without a valid certificate or link,
//! consensus state beyond its bounds) and what it must do once the network heals
//! (commit every entry an honest replica took, stop changing views), and the report
//! of how a run went.

use std::fmt;
use std::sync::Arc;

use super::Sim;
use crate::chain::{Block, CommitCertificate};
use crate::consensus::{Tip, Verifier};

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
                "{} seed {}: ok, height {}, view {}, {} events, {} virtual ms",
                self.scenario, self.seed, self.height, self.view, self.events, self.end_ms
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
        state.chain.insert(height, (block, certificate.clone()));
        if !honest {
            return;
        }
        if !links {
            self.violation = Some(Violation::BrokenLink { node, height });
            return;
        }
        // The quorum the replicas count with: a flaw that weakens it must show up as
        // the fork it allows, not merely as a certificate one vote short. Signatures
        // go through the run's memo, as most were checked when their COMMIT arrived.
        let mut verifier = Verifier::new(
            self.spec.chain_hash(),
            self.genesis_hash,
            &self.spec.members,
        )
        .with_memo(self.memo.clone());
        verifier.quorum = self.quorum;
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
            }
        }
    }

    /// The consensus state of every honest replica stays within fixed bounds.
    pub(super) fn check_bounds(&mut self) {
        let n = self.scenario.members;
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
        for node in self.honest().collect::<Vec<_>>() {
            let state = &self.nodes[node];
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
        let changes = self.max_view() - self.view_at_heal.unwrap_or(0);
        if changes > bound {
            self.violation = Some(Violation::ViewChangeStorm { changes, bound });
        }
    }
}
