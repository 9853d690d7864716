//! The normal case (C&L §4.2): accept a pre-prepare once its parent allows and it
//! validates, prepare, commit, apply strictly in height order, and, as primary,
//! cut, mine and propose the next block.

use std::collections::HashSet;
use std::sync::Arc;

use super::super::durable::Record;
use super::super::message::{Message, Payload, PreparedCertificate, Vote};
use super::{Accepted, Ancestry, Candidate, DropReason, LastCut, Output, Parent, Replica, Tip};
use crate::chain::merkle::leaf_hash;
use crate::chain::{
    fit_block, validate_block, Block, ChainError, CommitCertificate, CommitSignature, CompactRange,
    Entry, EntryIndex, Hash, Header, Membership, MembershipError, Reconfiguration,
    ValidationContext,
};

impl Replica {
    /// Makes every step the state allows, lowest height first, until none does.
    pub(super) fn advance(&mut self, index: &dyn EntryIndex) {
        while self.step_slots(index) {}
        self.settled = true;
        self.maybe_propose(index);
    }

    /// One pass of every step over the slots; whether any progressed.
    fn step_slots(&mut self, index: &dyn EntryIndex) -> bool {
        let mut progressed = false;
        let heights: Vec<u64> = self.slots.keys().copied().collect();
        for height in heights {
            progressed |= self.try_accept(height, index);
            progressed |= self.try_prepared(height);
            progressed |= self.try_committed(height);
        }
        progressed |= self.try_apply(index);
        progressed |= self.try_send_mined(index);
        progressed
    }

    /// What skipping the slots after entries assumes, checked in tests and in the
    /// simulator: a pass over them changes nothing.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn assert_settled(&mut self, index: &dyn EntryIndex) {
        let before = self.out.len();
        let progressed = self.step_slots(index);
        assert!(
            !progressed && self.out.len() == before,
            "entries moved the slots: {:?}",
            &self.out[before..]
        );
    }

    /// The parent a block at `height` must extend: the applied tip, or the block
    /// accepted at `height - 1` in this view, prepared or not. Blocks in flight are
    /// then accepted and voted on together, not one prepare round after another;
    /// what keeps a view change from leaving a hole is that no member is *prepared*
    /// at a height before it is prepared at the one below ([`Replica::try_prepared`]).
    pub(super) fn parent_for(&self, height: u64) -> Option<Parent> {
        let tip = self.tip.header.height;
        if height <= tip {
            return None; // already decided: nothing may be built at this height
        }
        if height == tip + 1 {
            return Some((
                self.tip.header,
                self.tip.log.clone(),
                self.applied_now.clone(),
            ));
        }
        let slot = self.slots.get(&(height - 1))?;
        let accepted = slot.accepted.as_ref().filter(|a| a.view == self.view)?;
        let log = accepted.log.clone()?;
        let ancestry = self
            .slots
            .range(tip + 1..height)
            .filter_map(|(_, slot)| slot.accepted.as_ref().map(|a| a.ids.clone()))
            .chain(self.applied_now.iter().cloned())
            .collect();
        Some((accepted.header, log, ancestry))
    }

    pub(super) fn validate(
        &self,
        block: &Block,
        parent: &Header,
        parent_log: &CompactRange,
        in_flight: Vec<Arc<HashSet<Hash>>>,
        index: &dyn EntryIndex,
    ) -> Result<(HashSet<Hash>, CompactRange), ChainError> {
        let chain_hash = self.chain_hash();
        let context = ValidationContext {
            chain_hash: &chain_hash,
            params: &self.config.params,
            parent,
            required_difficulty: self.required_difficulty(parent, index)?,
            now_ms: self.now_ms,
        };
        let ancestry = Ancestry {
            committed: index,
            in_flight,
        };
        let (ids, log) = validate_block(&context, block, parent_log, &ancestry)?;
        self.check_membership(block)?;
        if let Some(policy) = &self.config.policy {
            policy.check_block(block).map_err(ChainError::Policy)?;
        }
        Ok((ids.into_iter().collect(), log))
    }

    /// A block belongs to this replica's epoch, and its change, if it holds one, is
    /// one the membership on its chain takes.
    fn check_membership(&self, block: &Block) -> Result<(), ChainError> {
        let height = block.header.height;
        if !self.config.reconfigurations && block.entries.iter().any(Entry::is_reconfiguration) {
            return Err(MembershipError::NotOrdered.into());
        }
        let mut membership = self.membership_before(height)?;
        // Most blocks: no change on its way and none in the block, nothing to apply.
        if membership.pending.is_some() || block.entries.iter().any(Entry::is_reconfiguration) {
            membership
                .to_mut()
                .apply_block(&self.config.spec, height, &block.entries)?;
        }
        if membership.epoch != self.config.epoch {
            return Err(MembershipError::OtherEpoch {
                height,
                in_force: membership.epoch,
                ordering: self.config.epoch,
            }
            .into());
        }
        Ok(())
    }

    /// The membership after the blocks below `height` on the chain this replica
    /// builds: the tip's, then each block of this view accepted above it that holds
    /// a change (the tip's itself, not a copy, when none does).
    pub(super) fn membership_before(
        &self,
        height: u64,
    ) -> Result<std::borrow::Cow<'_, Membership>, ChainError> {
        let mut membership = std::borrow::Cow::Borrowed(&*self.membership);
        let above_tip = self.tip.header.height + 1;
        for (at, slot) in self.slots.range(above_tip..height.max(above_tip)) {
            let accepted = slot.accepted.as_ref();
            let Some(accepted) = accepted.filter(|a| a.reconfiguration && a.view == self.view)
            else {
                continue;
            };
            if let Some(block) = self.blocks.get(&accepted.hash) {
                membership
                    .to_mut()
                    .apply_block(&self.config.spec, *at, &block.entries)?;
            }
        }
        Ok(membership)
    }

    /// Whether a pooled change may go into the block at `height` on `membership`
    /// (the membership before it, advanced to that height). One that may not never
    /// will: once another change is in force the epoch it was signed for has passed,
    /// and a learner's progress only ages.
    pub(super) fn change_fits(&self, entry: &Entry, membership: &Membership, height: u64) -> bool {
        self.config.reconfigurations
            && Reconfiguration::decode(&entry.data)
                .is_ok_and(|change| membership.check(&self.config.spec, &change, height).is_ok())
    }

    pub(super) fn difficulty_window(&self) -> usize {
        self.config
            .policy
            .as_ref()
            .map_or(0, |policy| policy.difficulty_window())
    }

    /// The difficulty of the block after `parent`: the policy's verdict on the
    /// headers up to `parent` (accepted above the tip, applied, then committed in
    /// the index), or the genesis difficulty.
    pub(super) fn required_difficulty(
        &self,
        parent: &Header,
        index: &dyn EntryIndex,
    ) -> Result<u32, ChainError> {
        let (Some(policy), window) = (&self.config.policy, self.difficulty_window()) else {
            return Ok(self.config.difficulty);
        };
        if window == 0 {
            return Ok(self.config.difficulty);
        }
        let tip = self.tip.header.height;
        // Newest first while collecting; each must be the parent of the one before.
        let mut recent = vec![*parent];
        while recent.len() < window {
            let child = recent[recent.len() - 1];
            let Some(height) = child.height.checked_sub(1) else {
                break; // genesis
            };
            let found = if height > tip {
                self.slots
                    .get(&height)
                    .and_then(|slot| slot.accepted.as_ref())
                    .map(|accepted| accepted.header)
            } else if height == tip {
                Some(self.tip.header)
            } else {
                // `recent_applied` holds consecutive heights ending at the tip.
                let back = (tip - height) as usize;
                match self.recent_applied.len().checked_sub(back + 1) {
                    Some(at) => self.recent_applied.get(at).copied(),
                    None => index.header(height)?,
                }
            };
            match found.filter(|header| header.hash() == child.prev_hash) {
                Some(header) => recent.push(header),
                None => return Err(ChainError::PolicyHeaderMissing { height }),
            }
        }
        recent.reverse();
        let required = policy
            .required_difficulty(&recent)
            .map_err(ChainError::Policy)?;
        Ok(required.unwrap_or(self.config.difficulty))
    }

    /// Accepts the current view's candidate at `height` once its parent allows and it
    /// validates; a backup then sends PREPARE (C&L §4.2).
    pub(super) fn try_accept(&mut self, height: u64, index: &dyn EntryIndex) -> bool {
        if !self.active {
            return false;
        }
        let Some(slot) = self.slots.get(&height) else {
            return false;
        };
        let Some(candidate) = slot.candidate else {
            return false;
        };
        let hash = candidate.header.hash();
        let tip = self.tip.header.height;
        let (ids, log) = if height <= tip {
            // Re-proposed by a NEW-VIEW and already applied here: vote for it again
            // so the others can commit it, but only if it is the block applied.
            if slot.applied != Some(hash) {
                self.forget_candidate(height);
                self.drop_input(Some(self.primary()), "pre-prepare", DropReason::Conflicting);
                return false;
            }
            (Arc::new(HashSet::new()), None)
        } else {
            let Some(block) = self.block_or_fetch(height, hash) else {
                return false;
            };
            let Some((parent, parent_log, in_flight)) = self.parent_for(height) else {
                return false; // wait until the parent is accepted in this view
            };
            let parent_hash = parent.hash();
            let verdict = if block.header.prev_hash != parent_hash {
                Err(ChainError::WrongParent {
                    expected: parent_hash,
                    found: block.header.prev_hash,
                })
            } else {
                self.validate(&block, &parent, &parent_log, in_flight, index)
            };
            match verdict {
                Ok((ids, log)) => (Arc::new(ids), Some(log)),
                Err(error) => {
                    self.forget_candidate(height);
                    self.drop_for(
                        Some(self.primary()),
                        "pre-prepare",
                        DropReason::InvalidBlock,
                        Some(error),
                    );
                    return false;
                }
            }
        };
        let view = self.view;
        let block = self.blocks.get(&hash).cloned();
        let reconfiguration = block
            .as_ref()
            .is_some_and(|block| block.entries.iter().any(Entry::is_reconfiguration));
        if let Some(block) = &block {
            self.out.push(Output::Persist(Record::Accepted {
                view,
                block: block.clone(),
                signature: candidate.signature,
            }));
        }
        let votes = !self.is_primary() && !self.abstaining();
        let prepare = votes.then(|| self.sign(Payload::Prepare { view, height, hash }));
        let me = self.config.me;
        let slot = self.slots.get_mut(&height).expect("slot exists");
        slot.candidate = None;
        slot.accepted = Some(Accepted {
            view,
            hash,
            header: candidate.header,
            signature: candidate.signature,
            ids,
            log,
            reconfiguration,
        });
        if let Some(prepare) = prepare {
            slot.prepares.insert(me, (hash, prepare.signature));
            slot.sent.push(prepare.clone());
            self.out.push(Output::Broadcast(prepare));
        }
        if std::mem::take(&mut slot.propose_again) {
            if let Some(block) = block {
                let pre_prepare = self.sign(Payload::PrePrepare { view, block });
                let slot = self.slots.get_mut(&height).expect("slot exists");
                slot.sent.push(pre_prepare.clone());
                self.out.push(Output::Broadcast(pre_prepare));
            }
        }
        true
    }

    /// The block with `hash` if it is here; otherwise asks for it (once per slot)
    /// and returns `None`.
    fn block_or_fetch(&mut self, height: u64, hash: Hash) -> Option<Arc<Block>> {
        if let Some(block) = self.blocks.get(&hash) {
            return Some(Arc::clone(block));
        }
        let slot = self.slots.get_mut(&height)?;
        if slot.fetching != Some(hash) {
            slot.fetching = Some(hash);
            self.out.push(Output::FetchBlock { height, hash });
        }
        None
    }

    pub(super) fn forget_candidate(&mut self, height: u64) {
        if let Some(slot) = self.slots.get_mut(&height) {
            slot.candidate = None;
            slot.propose_again = false;
        }
    }

    /// Prepared: the accepted block and q − 1 matching prepares from backups, on a
    /// parent prepared here in this view (or the applied tip, if the block extends
    /// it). The certificate is persisted before COMMIT is sent (C&L §4.2, §6.1).
    ///
    /// The parent's condition is the chaining rule. A block committed at h + 1 is
    /// prepared at f + 1 honest members, so each of them is also prepared at h with
    /// its parent, and every quorum of VIEW-CHANGEs holds both: the NEW-VIEW cannot
    /// drop h under a block that may have committed.
    pub(super) fn try_prepared(&mut self, height: u64) -> bool {
        if self.abstaining() {
            return false;
        }
        let quorum = self.quorum();
        let view = self.view;
        let primary = self.primary();
        let Some(slot) = self.slots.get(&height) else {
            return false;
        };
        let Some(accepted) = slot.accepted.as_ref().filter(|a| a.view == view) else {
            return false;
        };
        if slot.prepared.as_ref().is_some_and(|p| p.view == view) {
            return false;
        }
        let tip = self.tip.header.height;
        let parent_prepared = match height.cmp(&(tip + 1)) {
            std::cmp::Ordering::Less => true, // applied here: voted for again
            std::cmp::Ordering::Equal => accepted.header.prev_hash == self.tip.header.hash(),
            std::cmp::Ordering::Greater => self.slots.get(&(height - 1)).is_some_and(|parent| {
                parent
                    .prepared
                    .as_ref()
                    .is_some_and(|p| p.view == view && p.header.hash() == accepted.header.prev_hash)
            }),
        };
        if !parent_prepared && !self.flaws().skip_chaining {
            return false;
        }
        let mut votes = vec![Vote {
            member: primary,
            signature: accepted.signature,
        }];
        votes.extend(
            slot.prepares
                .iter()
                .filter(|(member, (hash, _))| **member != primary && *hash == accepted.hash)
                .map(|(member, (_, signature))| Vote {
                    member: *member,
                    signature: *signature,
                }),
        );
        if votes.len() < quorum {
            return false;
        }
        let certificate = PreparedCertificate {
            view,
            header: accepted.header,
            votes,
        };
        let hash = accepted.hash;
        let commit = self.sign(Payload::Commit { view, height, hash });
        self.out
            .push(Output::Persist(Record::Prepared(certificate.clone())));
        self.slots.get_mut(&height).expect("slot exists").prepared = Some(certificate);
        self.send_commit(height, hash, commit);
        true
    }

    /// Counts this replica's own `commit` of `hash` at `height`, and sends it until
    /// the slot is decided.
    fn send_commit(&mut self, height: u64, hash: Hash, commit: Message) {
        let me = self.config.me;
        let slot = self.slots.get_mut(&height).expect("slot exists");
        slot.commits.insert(me, (hash, commit.signature));
        slot.sent.push(commit.clone());
        self.out.push(Output::Broadcast(commit));
    }

    /// After a restart in an active view, what this replica had persisted above its
    /// tip may never have left, and with every member restarted at once nobody holds
    /// it to send again (the cluster waited out a view change for the block it had in
    /// flight). The COMMITs of its prepared certificates are signed again (the same
    /// words) and sent until the slot is decided; as primary, its proposals' PRE-PREPAREs
    /// too, once each block is accepted again ([`Replica::try_accept`]): one it now
    /// refuses is not sent. A backup's PREPARE comes back as it accepts its candidate.
    pub(super) fn say_again(&mut self) {
        let view = self.view;
        let tip = self.tip.header.height;
        let primary = self.is_primary();
        let mut prepared = Vec::new();
        for (height, slot) in self.slots.range_mut(tip + 1..) {
            slot.propose_again = primary && slot.candidate.is_some();
            if let Some(certificate) = slot.prepared.as_ref().filter(|p| p.view == view) {
                prepared.push((*height, certificate.header.hash()));
            }
        }
        for (height, hash) in prepared {
            let commit = self.sign(Payload::Commit { view, height, hash });
            self.send_commit(height, hash, commit);
        }
    }

    /// Committed: prepared here and q matching commits; their signatures are the
    /// block's commit certificate (C&L §4.2).
    pub(super) fn try_committed(&mut self, height: u64) -> bool {
        let quorum = self.quorum();
        let view = self.view;
        let Some(slot) = self.slots.get(&height) else {
            return false;
        };
        if slot.certificate.is_some() {
            return false;
        }
        // An abstaining replica prepares nothing, yet a quorum's COMMITs on the block it
        // accepted are the very certificate a fetched block carries: it applies on
        // them and keeps in step instead of fetching each block after the fact.
        let hash = match slot.prepared.as_ref().filter(|p| p.view == view) {
            Some(prepared) => prepared.header.hash(),
            None if self.abstaining() => match slot.accepted.as_ref().filter(|a| a.view == view) {
                Some(accepted) => accepted.hash,
                None => return false,
            },
            None => return false,
        };
        let signatures: Vec<CommitSignature> = slot
            .commits
            .iter()
            .filter(|(_, (voted, _))| *voted == hash)
            .filter_map(|(member, (_, signature))| {
                Some(CommitSignature {
                    node_id: self.config.verifier.node_id(*member)?,
                    signature: *signature,
                })
            })
            .collect();
        if signatures.len() < quorum {
            return false;
        }
        let certificate = CommitCertificate {
            view,
            height,
            block_hash: hash,
            signatures,
        };
        self.slots
            .get_mut(&height)
            .expect("slot exists")
            .certificate = Some(certificate);
        true
    }

    /// Applies committed blocks strictly in height order.
    pub(super) fn try_apply(&mut self, index: &dyn EntryIndex) -> bool {
        let height = self.tip.header.height + 1;
        let Some(slot) = self.slots.get(&height) else {
            return false;
        };
        let Some(certificate) = slot.certificate.clone() else {
            return false;
        };
        let hash = certificate.block_hash;
        let accepted = slot
            .accepted
            .as_ref()
            .filter(|a| a.hash == hash)
            .and_then(|a| Some((a.ids.as_ref().clone(), a.log.clone()?)));
        let Some(block) = self.block_or_fetch(height, hash) else {
            return false;
        };
        let (ids, log) = match accepted {
            Some(known) => known,
            // Committed in an earlier view without being accepted here.
            None => match self.validate(
                &block,
                &self.tip.header.clone(),
                &self.tip.log.clone(),
                Vec::new(),
                index,
            ) {
                Ok(known) => known,
                Err(_) => return false,
            },
        };
        self.apply(block, certificate, ids, log);
        true
    }

    pub(super) fn apply(
        &mut self,
        block: Arc<Block>,
        certificate: CommitCertificate,
        ids: HashSet<Hash>,
        log: CompactRange,
    ) {
        let height = block.header.height;
        let hash = block.hash();
        self.out.push(Output::Apply {
            block: block.clone(),
            certificate: certificate.clone(),
        });
        if self.membership.pending.is_some() || block.entries.iter().any(Entry::is_reconfiguration)
        {
            // Validated on this chain already; a failure would leave it as it was.
            let mut next = (*self.membership).clone();
            if next
                .apply_block(&self.config.spec, height, &block.entries)
                .is_ok()
            {
                self.membership = Arc::new(next);
            }
        }
        self.tip = Tip {
            header: block.header,
            log,
        };
        let window = self.difficulty_window();
        if window > 0 {
            self.recent_applied.push_back(block.header);
            while self.recent_applied.len() > window {
                self.recent_applied.pop_front();
            }
        }
        self.consecutive_view_changes = 0;
        self.progress_ms = self.now_ms;
        for id in &ids {
            self.pending.remove(id);
        }
        crate::shrink_sparse(&mut self.pending);
        self.applied_now.push(Arc::new(ids));
        // Removed ids leave `order` lazily, from the front; one long wait at the front
        // must not let the rest pile up behind it.
        if self.order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.order.retain(|id| pending.contains_key(id));
            self.unshared.retain(|id| pending.contains_key(id));
        }
        if height > self.low() {
            let slot = self.slots.entry(height).or_default();
            slot.applied = Some(hash);
            slot.certificate = Some(certificate);
            slot.sent.clear();
        }
        if height.is_multiple_of(self.config.params.checkpoint_interval.max(1)) {
            self.vote_checkpoint(height, hash);
        }
    }

    /// Signs and sends this replica's CHECKPOINT for an applied block; it is sent
    /// again at every retransmit until a newer one replaces it.
    pub(super) fn vote_checkpoint(&mut self, height: u64, hash: Hash) {
        if height <= self.low() {
            return;
        }
        let checkpoint = self.sign(Payload::Checkpoint { height, hash });
        let me = self.config.me;
        self.claims[usize::from(me)] = height;
        self.checkpoint_votes
            .entry(height)
            .or_default()
            .insert(me, (hash, checkpoint.signature));
        self.my_checkpoint = Some(checkpoint.clone());
        self.out.push(Output::Broadcast(checkpoint));
        self.try_stabilize(height);
    }

    /// The primary's mined block goes out if it still extends the primary's last
    /// proposal in this view (prepared or not: see [`Replica::parent_for`]).
    pub(super) fn try_send_mined(&mut self, index: &dyn EntryIndex) -> bool {
        let Some(block) = self.mined.clone() else {
            return false;
        };
        let height = block.header.height;
        if !self.active || !self.is_primary() || height <= self.tip.header.height {
            self.mined = None; // stale: the view or the tip moved while it was mined
            return false;
        }
        let Some((parent, _, _)) = self.parent_for(height) else {
            return false;
        };
        self.mined = None;
        if block.header.prev_hash != parent.hash() || height > self.high() {
            return false; // built on a block that is no longer the parent
        }
        let view = self.view;
        let message = self.sign(Payload::PrePrepare {
            view,
            block: block.clone(),
        });
        let hash = block.hash();
        self.blocks.insert(hash, block.clone());
        let slot = self.slots.entry(height).or_default();
        slot.candidate = Some(Candidate {
            header: block.header,
            signature: message.signature,
        });
        slot.sent.push(message.clone());
        // Accepting its own block persists it; the pre-prepare leaves after that.
        let before = self.out.len();
        let accepted = self.try_accept(height, index);
        if accepted {
            self.out.push(Output::Broadcast(message));
        } else {
            // Nothing of a refused proposal leaves, but what it refused is told.
            let refused: Vec<Output> = self
                .out
                .drain(before..)
                .filter(|output| matches!(output, Output::Dropped { .. }))
                .collect();
            self.out.extend(refused);
            if let Some(slot) = self.slots.get_mut(&height) {
                slot.candidate = None;
                slot.sent.clear();
            }
        }
        accepted
    }

    /// When waiting entries fall due for a block if no input comes first: a driver
    /// whose ticks are coarser than the delay tells the replica the time then
    /// (`Input::Clock`). `None` while a cut waits for an input instead (a block in
    /// flight to prepare, mining, not the primary). At times early, never late.
    pub fn cut_due_ms(&self) -> Option<u64> {
        self.cut_due_ms
    }

    /// The primary cuts a block when
    /// - enough entries wait for a full block;
    /// - nothing of its own is in flight and entries come one at a time;
    /// - the oldest has waited `max_block_delay` and fewer than
    ///   `max_blocks_in_flight` of its blocks are still preparing (so entries that
    ///   come together gather for the delay even with nothing in flight), and
    ///   `min_block_interval_ms` has passed since its last cut or as many entries
    ///   wait as arrived in that long before it;
    /// - or a cut was asked for, or the epoch ends.
    ///
    /// It mines on top of its last proposal. Time is the replica's clock, which the
    /// driver moves at ticks and between them (`Input::Clock`): at the start of
    /// each turn, and when [`Replica::cut_due_ms`] says a block falls due.
    pub(super) fn maybe_propose(&mut self, index: &dyn EntryIndex) {
        self.cut_due_ms = None;
        if !self.active
            || !self.is_primary()
            || self.abstaining()
            || self.mining.is_some()
            || self.mined.is_some()
        {
            return;
        }
        // An exact shortcut, taken on most inputs: fewer entries than a block holds,
        // the oldest younger than the delay (or `max_blocks_in_flight` in flight),
        // something in flight or entries coming together, and no cut asked for mean
        // no block is due; the full scan below clones entries.
        let limit = self.config.max_block_entries;
        let delay = self.config.timing.max_block_delay_ms;
        let now = self.now_ms;
        let tip = self.tip.header.height;
        // While entries arrive together (more than one between the last two cuts),
        // the oldest waits `max_block_delay` for the others even with nothing in
        // flight. Each block costs every member proof of work, signatures and writes
        // however few entries it holds: on a busy primary a cut per round leaves the
        // cluster's CPU to that per-block work, and where rounds are long (a WAN) a
        // cut at the first entry of a burst sends it alone, and the rest wait a round
        // for the next. Entries that come one at a time have nothing to gather and go
        // at once.
        let at_once = !self.last_cut.together() && self.slots.range(tip + 1..).next().is_none();
        // Only blocks on their way in this view count: a slot an earlier view left
        // above the tip holds nothing back (the cut below replaces it). A prepared
        // block no longer does either: its successor is mined while it commits,
        // which the chaining rule allows (mining is the longest step of a block).
        let ours = (tip + 1..)
            .map_while(|height| self.slots.get(&height))
            .take_while(|slot| slot.accepted.as_ref().is_some_and(|a| a.view == self.view))
            .filter(|slot| slot.prepared.as_ref().is_none_or(|p| p.view != self.view))
            .count();
        let room = ours < self.config.max_blocks_in_flight;
        // While entries keep coming, the last block's prepare would set the pace
        // whatever the rate, and the members' CPU would go to blocks of a few
        // entries: the next cut also waits out `min_block_interval_ms` from the last
        // one, unless as many entries wait as arrived in that long before it (a
        // closed loop's clients, all back, gain nothing by waiting).
        let interval = self.config.min_block_interval_ms;
        let next_cut = self.last_cut.at_ms.saturating_add(interval);
        let expected = self.last_cut.expected_in(interval);
        let due_at = |arrived: u64, count: usize| match count as u64 >= expected {
            true => arrived.saturating_add(delay),
            false => arrived.saturating_add(delay).max(next_cut),
        };
        let waited = |arrived: u64, count: usize| room && now >= due_at(arrived, count);
        let count = self.pending.len();
        let due = self
            .oldest_pending()
            .is_some_and(|pending| at_once || waited(pending.arrived_ms, count));
        let ending = self.epoch_ending();
        // The pool also holds the entries of the blocks in flight, so it can hold a
        // block's worth while no full block waits. Entries leave the candidates only
        // into blocks or out of the pool, so until the view or tip moves, a full block
        // needs as many arrivals as the last scan lacked: without this, every entry
        // that arrives under load would rescan the pool.
        let full = self.pending.len() >= limit
            && self.cut_scan.is_none_or(|(view, at, needed)| {
                view != self.view || at != tip || self.arrivals >= needed
            });
        if !self.cut_requested && !full && !due && !ending {
            // Counted from the oldest in the pool, in flight or not: not later than
            // the entries that wait fall due.
            if room {
                self.cut_due_ms = self
                    .oldest_pending()
                    .map(|pending| due_at(pending.arrived_ms, count));
            }
            return;
        }
        let mut parent_height = tip;
        let mut parent = self.tip.header;
        let mut log = self.tip.log.clone();
        let mut in_flight = Vec::new();
        for (height, slot) in self.slots.range(tip + 1..) {
            if *height != parent_height + 1 {
                break;
            }
            if slot.candidate.is_some() {
                return; // a re-proposal still waits for its body or parent
            }
            match slot.accepted.as_ref().filter(|a| a.view == self.view) {
                Some(accepted) => match &accepted.log {
                    Some(accepted_log) => {
                        parent_height = *height;
                        parent = accepted.header;
                        log = accepted_log.clone();
                        in_flight.push(accepted.ids.clone());
                    }
                    None => return,
                },
                None => break,
            }
        }
        let height = parent_height + 1;
        if height > self.high() {
            return;
        }
        let Ok(mut membership) = self.membership_before(height) else {
            return;
        };
        if membership.pending.is_some() {
            membership.to_mut().advance_to(height);
        }
        if membership.epoch != self.config.epoch {
            return; // the next epoch's members order this height
        }
        let mut entries = Vec::new();
        let mut oldest = None;
        let mut change_taken = false;
        let mut unfit = Vec::new();
        for id in &self.order {
            if entries.len() >= limit {
                break;
            }
            let Some(pending) = self.pending.get(id) else {
                continue;
            };
            if in_flight.iter().any(|ids| ids.contains(id)) {
                continue;
            }
            if pending.entry.is_reconfiguration() {
                // One change per block, and only one the membership takes here.
                if change_taken || !self.change_fits(&pending.entry, &membership, height) {
                    if !change_taken {
                        unfit.push(*id);
                    }
                    continue;
                }
                change_taken = true;
            }
            oldest = Some(oldest.unwrap_or(pending.arrived_ms).min(pending.arrived_ms));
            entries.push(pending.entry.clone());
        }
        for id in unfit {
            self.unpool(&id, "the membership no longer takes this change".into());
        }
        let due = entries.len() >= limit
            || (at_once && !entries.is_empty())
            || oldest.is_some_and(|arrived| waited(arrived, entries.len()));
        if !(due || self.cut_requested || ending) {
            if room {
                self.cut_due_ms = oldest.map(|arrived| due_at(arrived, entries.len()));
            }
            let lacking = (limit - entries.len()) as u64;
            self.cut_scan = Some((self.view, tip, self.arrivals + lacking));
            return;
        }
        let asked = std::mem::take(&mut self.cut_requested);
        let Ok(difficulty) = self.required_difficulty(&parent, index) else {
            // The policy failed here; the others' timers will replace this primary.
            return;
        };
        let timestamp = self.now_ms.max(parent.timestamp_ms + 1);
        let header_for = |entries: &[Entry]| {
            let mut log = log.clone();
            for entry in entries {
                log.append(leaf_hash(entry.id().as_bytes()), |_, _, _| {});
            }
            Header::child(&parent, &log, timestamp, difficulty)
        };
        let mut block = Block {
            header: header_for(&entries),
            entries,
        };
        // A rule about the block itself (`fit_block`'s `Err`) refuses any block:
        // this one is proposed as before, refused once mined, until the others'
        // timers replace this primary.
        let fit = self
            .config
            .policy
            .clone()
            .and_then(|p| fit_block(p.as_ref(), &block).ok());
        if let Some(fit) = fit {
            if fit.taken.len() < block.entries.len() {
                for (i, reason) in fit.refused {
                    self.refuse_pooled(&block.entries[i].id(), reason);
                }
                let entries: Vec<Entry> = fit
                    .taken
                    .into_iter()
                    .map(|i| block.entries[i].clone())
                    .collect();
                if entries.is_empty() && !asked && !ending {
                    return;
                }
                block = Block {
                    header: header_for(&entries),
                    entries,
                };
            }
        }
        self.mining = Some(block.header);
        self.last_cut = LastCut {
            arrivals: self.arrivals,
            at_ms: self.now_ms,
            gathered: self.arrivals.saturating_sub(self.last_cut.arrivals),
            span_ms: self.now_ms.saturating_sub(self.last_cut.at_ms),
        };
        self.out.push(Output::Mine(Arc::new(block)));
    }
}
