//! Byzantine members: a real replica whose outputs are rewritten before they leave.
//! Each behaviour signs with the member's real key, so only the protocol (not a
//! signature check) can stand in its way, except where forging is the point.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};

use super::{mine, Rng};
use crate::chain::{Block, Hash};
use crate::consensus::{pre_prepare_digest, MemberIndex, Message, Output, Payload, Replica};

/// What a Byzantine member does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// As primary, sends one block to half the members and another to the rest, and
    /// commits to each half what it was shown.
    Equivocate,
    /// Prepares and commits a random block hash towards half the members.
    ConflictingVotes,
    /// Corrupts signatures and impersonates other members.
    ForgeSignatures,
    /// As primary, proposes invalid blocks: bad PoW, wrong parent, bad log root, a
    /// timestamp far ahead, a body that does not match the header.
    InvalidBlocks,
    /// As primary, never sends a pre-prepare.
    Withhold,
    /// Sends old messages (older views, older heights) again to random members.
    Replay,
    /// As a new primary, replaces the last re-proposal of its NEW-VIEW.
    BogusNewView,
    /// Two processes run with one key.
    Twin,
    /// Never runs.
    Silent,
    /// Votes honestly but serves forged snapshots to members that join: a certificate
    /// short of a quorum, tile roots that do not fold into the log root, a header of
    /// its own making, or a good manifest with a corrupted chunk.
    LyingSnapshots,
}

impl Behaviour {
    /// Every behaviour.
    pub const ALL: [Behaviour; 10] = [
        Behaviour::Equivocate,
        Behaviour::ConflictingVotes,
        Behaviour::ForgeSignatures,
        Behaviour::InvalidBlocks,
        Behaviour::Withhold,
        Behaviour::Replay,
        Behaviour::BogusNewView,
        Behaviour::Twin,
        Behaviour::Silent,
        Behaviour::LyingSnapshots,
    ];

    /// Its name in scenario names.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Equivocate => "equivocate",
            Behaviour::ConflictingVotes => "conflicting-votes",
            Behaviour::ForgeSignatures => "forge-signatures",
            Behaviour::InvalidBlocks => "invalid-blocks",
            Behaviour::Withhold => "withhold",
            Behaviour::Replay => "replay",
            Behaviour::BogusNewView => "bogus-new-view",
            Behaviour::Twin => "twin",
            Behaviour::Silent => "silent",
            Behaviour::LyingSnapshots => "lying-snapshots",
        }
    }
}

/// The state of one Byzantine member's rewriting.
pub(super) struct Adversary {
    behaviour: Behaviour,
    key: SigningKey,
    seen: VecDeque<Message>,
}

/// What colluding Byzantine members share: for each block one of them equivocated
/// on, the other block, both ways, and which of the two the first half was shown.
#[derive(Default)]
pub(super) struct Collusion {
    other: HashMap<Hash, Hash>,
    shown_first: HashSet<Hash>,
}

/// Members 0, 2, 4, ... see one story, the others another.
fn first_half(member: MemberIndex) -> bool {
    member.is_multiple_of(2)
}

/// The same entries one millisecond later: another valid block on the same parent.
fn alternative(block: &Block) -> Block {
    let mut template = block.clone();
    template.header.timestamp_ms += 1;
    mine(&template)
}

impl Adversary {
    pub(super) fn new(behaviour: Behaviour, key: SigningKey) -> Adversary {
        Adversary {
            behaviour,
            key,
            seen: VecDeque::new(),
        }
    }

    /// Remembers messages received, for replaying later.
    pub(super) fn observe(&mut self, message: &Message) {
        if self.behaviour == Behaviour::Replay {
            self.seen.push_back(message.clone());
            if self.seen.len() > 512 {
                self.seen.pop_front();
            }
        }
    }

    /// Old messages to send again this tick.
    pub(super) fn replays(&mut self, rng: &mut Rng, members: usize) -> Vec<(MemberIndex, Message)> {
        if self.behaviour != Behaviour::Replay || self.seen.is_empty() || !rng.chance(0.3) {
            return Vec::new();
        }
        let message = self.seen[rng.below(self.seen.len() as u64) as usize].clone();
        vec![(rng.below(members as u64) as MemberIndex, message)]
    }

    /// Rewrites a replica's outputs.
    pub(super) fn tamper(
        &mut self,
        outputs: Vec<Output>,
        replica: &Replica,
        rng: &mut Rng,
        members: usize,
        collusion: &mut Collusion,
    ) -> Vec<Output> {
        let me = replica.me();
        let domain = replica.signing_domain();
        let sign = |payload: Payload| Message::sign(&domain, me, &self.key, payload);
        let others: Vec<MemberIndex> = (0..members as MemberIndex).filter(|m| *m != me).collect();
        let mut out = Vec::with_capacity(outputs.len());
        for output in outputs {
            let Output::Broadcast(message) = output else {
                out.push(output);
                continue;
            };
            match (self.behaviour, &message.payload) {
                (Behaviour::Equivocate, Payload::PrePrepare { view, block }) => {
                    let other = Arc::new(alternative(block));
                    collusion.other.insert(block.hash(), other.hash());
                    collusion.other.insert(other.hash(), block.hash());
                    collusion.shown_first.insert(block.hash());
                    let forged = sign(Payload::PrePrepare {
                        view: *view,
                        block: other,
                    });
                    split(&mut out, &others, message.clone(), forged);
                }
                (
                    Behaviour::Equivocate,
                    Payload::Prepare { view, height, hash }
                    | Payload::Commit { view, height, hash },
                ) => match collusion.other.get(hash) {
                    // Every colluder votes, towards each half, for the block that half saw.
                    Some(other) => {
                        let commit = matches!(message.payload, Payload::Commit { .. });
                        let vote = |hash: Hash| {
                            let (view, height) = (*view, *height);
                            sign(if commit {
                                Payload::Commit { view, height, hash }
                            } else {
                                Payload::Prepare { view, height, hash }
                            })
                        };
                        let (first, second) = if collusion.shown_first.contains(hash) {
                            (*hash, *other)
                        } else {
                            (*other, *hash)
                        };
                        split(&mut out, &others, vote(first), vote(second));
                    }
                    None => out.push(Output::Broadcast(message)),
                },
                (Behaviour::ConflictingVotes, Payload::Prepare { view, height, .. }) => {
                    let forged = sign(Payload::Prepare {
                        view: *view,
                        height: *height,
                        hash: Hash(rng.bytes32()),
                    });
                    split(&mut out, &others, message.clone(), forged);
                }
                (Behaviour::ConflictingVotes, Payload::Commit { view, height, .. }) => {
                    let forged = sign(Payload::Commit {
                        view: *view,
                        height: *height,
                        hash: Hash(rng.bytes32()),
                    });
                    split(&mut out, &others, message.clone(), forged);
                }
                (Behaviour::ForgeSignatures, _) => {
                    for to in &others {
                        let mut copy = message.clone();
                        match rng.below(3) {
                            0 => copy.signature[rng.below(64) as usize] ^= 1 << rng.below(8),
                            1 => copy.from = others[rng.below(others.len() as u64) as usize],
                            _ => {}
                        }
                        out.push(Output::Send {
                            to: *to,
                            message: copy,
                        });
                    }
                }
                (Behaviour::InvalidBlocks, Payload::PrePrepare { view, block }) => {
                    let bad = Arc::new(invalid(block, rng));
                    out.push(Output::Broadcast(sign(Payload::PrePrepare {
                        view: *view,
                        block: bad,
                    })));
                }
                (Behaviour::Withhold, Payload::PrePrepare { .. }) => {}
                (Behaviour::BogusNewView, Payload::NewView(new_view)) => {
                    let mut bogus = new_view.clone();
                    let replaced = bogus.proposals.last_mut().and_then(|proposal| {
                        let body = replica.block(&proposal.header.hash())?;
                        let other = Arc::new(alternative(&body));
                        proposal.header = other.header;
                        let digest = pre_prepare_digest(
                            &domain,
                            bogus.view,
                            other.header.height,
                            &other.hash(),
                        );
                        proposal.signature = self.key.sign(digest.as_bytes()).to_bytes();
                        Some(other)
                    });
                    match replaced {
                        Some(other) => {
                            // The body, so replicas need not fetch it, and this
                            // member's commit, as a colluder would vote.
                            let (view, height, hash) =
                                (bogus.view, other.header.height, other.hash());
                            out.push(Output::Broadcast(sign(Payload::NewView(bogus))));
                            out.push(Output::Broadcast(sign(Payload::PrePrepare {
                                view,
                                block: other,
                            })));
                            out.push(Output::Broadcast(sign(Payload::Commit {
                                view,
                                height,
                                hash,
                            })));
                        }
                        None => out.push(Output::Broadcast(message)),
                    }
                }
                _ => out.push(Output::Broadcast(message)),
            }
        }
        out
    }
}

/// Sends `first` to the first half of `others` and `second` to the rest.
fn split(out: &mut Vec<Output>, others: &[MemberIndex], first: Message, second: Message) {
    for to in others {
        let message = if first_half(*to) {
            first.clone()
        } else {
            second.clone()
        };
        out.push(Output::Send { to: *to, message });
    }
}

/// A block no honest replica may accept, signed as if it were fine.
fn invalid(block: &Block, rng: &mut Rng) -> Block {
    let mut bad = block.clone();
    match rng.below(5) {
        0 => {
            // Bad PoW: a nonce that misses the difficulty.
            while bad.header.meets_difficulty() {
                bad.header.nonce = bad.header.nonce.wrapping_add(1);
            }
            return bad;
        }
        1 => bad.header.prev_hash = Hash(rng.bytes32()),
        2 => bad.header.log_root = Hash(rng.bytes32()),
        3 => bad.header.timestamp_ms += 86_400_000,
        _ => {
            // A body that does not match the header's log root.
            match bad.entries.first().cloned() {
                Some(entry) => bad.entries.push(entry),
                None => bad.header.log_root = Hash(rng.bytes32()),
            }
            if !bad.entries.is_empty() {
                return bad;
            }
        }
    }
    mine(&bad)
}

/// A real member made Byzantine: the `byzantine` build of `ledgerd` (test-only, for
/// the fault-injection harness) rewrites its replica's outputs with the simulator's
/// behaviours, so the real network, storage and TLS code face them too.
#[cfg(feature = "byzantine")]
pub struct Rogue {
    adversary: Adversary,
    rng: Rng,
    collusion: Collusion,
}

/// Set by `ledgerd-byzantine` alone: a `ledgerd` built with the feature by mistake
/// ignores the variables and stays honest.
#[cfg(feature = "byzantine")]
static ALLOWED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(feature = "byzantine")]
impl Rogue {
    /// Lets [`Rogue::from_env`] and [`Rogue::flaw_from_env`] act on the
    /// environment (`ledgerd-byzantine` calls it first thing).
    pub fn allow() {
        ALLOWED.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn allowed() -> bool {
        ALLOWED.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The behaviour `LEDGER_BYZANTINE` names, drawing from `LEDGER_BYZANTINE_SEED`
    /// (default 1); `None` when the variable is unset. Behaviours of whole processes
    /// (`silent`, `twin`) and of snapshot serving are the harness's or the
    /// simulator's, not a replica's, and are refused.
    pub fn from_env(key: &SigningKey) -> Result<Option<Rogue>, String> {
        let Ok(name) = std::env::var("LEDGER_BYZANTINE") else {
            return Ok(None);
        };
        if !Rogue::allowed() {
            return Ok(None);
        }
        let rewrites = Behaviour::ALL.into_iter().filter(|b| {
            !matches!(
                b,
                Behaviour::Twin | Behaviour::Silent | Behaviour::LyingSnapshots
            )
        });
        let behaviour = rewrites.clone().find(|b| b.name() == name).ok_or_else(|| {
            let names: Vec<&str> = rewrites.map(|b| b.name()).collect();
            format!("LEDGER_BYZANTINE={name}: not one of {}", names.join(", "))
        })?;
        let seed = match std::env::var("LEDGER_BYZANTINE_SEED") {
            Ok(seed) => seed
                .parse()
                .map_err(|_| format!("LEDGER_BYZANTINE_SEED={seed}: not a number"))?,
            Err(_) => 1,
        };
        Ok(Some(Rogue {
            adversary: Adversary::new(behaviour, key.clone()),
            rng: Rng::new(seed),
            collusion: Collusion::default(),
        }))
    }

    /// The protocol break `LEDGER_FLAW` names (`weak-quorum`: 2f matching votes
    /// make a quorum), for a run that proves the harness's checks can fail; `None`
    /// when the variable is unset.
    pub fn flaw_from_env() -> Result<Option<crate::consensus::Flaws>, String> {
        match std::env::var("LEDGER_FLAW").as_deref() {
            Err(_) => Ok(None),
            Ok(_) if !Rogue::allowed() => Ok(None),
            Ok("weak-quorum") => Ok(Some(crate::consensus::Flaws {
                weak_quorum: true,
                ..Default::default()
            })),
            Ok(other) => Err(format!("LEDGER_FLAW={other}: only weak-quorum is known")),
        }
    }

    /// The behaviour's name.
    pub fn name(&self) -> &'static str {
        self.adversary.behaviour.name()
    }

    /// Rewrites `outputs` of `replica`.
    pub fn tamper(&mut self, outputs: Vec<Output>, replica: &Replica) -> Vec<Output> {
        let members = replica.membership().members.len();
        self.adversary.tamper(
            outputs,
            replica,
            &mut self.rng,
            members,
            &mut self.collusion,
        )
    }

    /// Remembers a message received, for replaying.
    pub fn observe(&mut self, message: &Message) {
        self.adversary.observe(message);
    }

    /// Old messages to send again now.
    pub fn replays(&mut self, replica: &Replica) -> Vec<(MemberIndex, Message)> {
        let members = replica.membership().members.len();
        self.adversary.replays(&mut self.rng, members)
    }
}
