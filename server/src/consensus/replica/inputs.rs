//! The replica's inputs: messages checked and filed (C&L §4.2-§4.5), entries, mined
//! and fetched blocks, and the tick that drives timers, retransmission and catch-up
//! (§5.2, §5.3).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::durable::Record;
use super::super::message::{CheckpointCertificate, Invalid, MemberIndex, Message, Payload, Vote};
use super::view_change::highest_checkpoint;
use super::{
    Candidate, DropReason, Output, Replica, ViewChangeCause, Waiting, COMMITTED_BLOCK, PROBE_CHECKS,
};
use crate::chain::{
    fit_block, Block, ChainError, CommitCertificate, Entry, EntryIndex, Hash, Header,
};

impl Replica {
    pub(super) fn on_message(&mut self, message: Message) {
        let from = message.from;
        let kind = message.kind();
        if usize::from(from) >= self.config.verifier.len() || from == self.config.me {
            return self.drop_input(Some(from), kind, DropReason::NotMember);
        }
        // Cheap filters first: a signature is checked only on a message that matters.
        if let Err(reason) = self.precheck(&message) {
            if matches!(reason, DropReason::Stale | DropReason::WrongView) {
                // A replica out of step with the others' view still learns how far
                // they got, so it fetches their committed blocks. Unverified: a lie
                // costs one fetch per retransmit interval.
                if let Payload::PrePrepare { block, .. } = &message.payload {
                    self.seen_height = self.seen_height.max(block.header.height);
                } else if let Payload::Prepare { height, .. } | Payload::Commit { height, .. } =
                    &message.payload
                {
                    self.seen_height = self.seen_height.max(*height);
                }
            }
            if let (DropReason::Stale, Payload::ViewChange(change)) = (reason, &message.payload) {
                self.answer_stale_view_change(&message, change.new_view);
            }
            return self.drop_input(Some(from), kind, reason);
        }
        if self.needless_vote(&message) {
            // Not dropped for a fault: a quorum's last vote routinely arrives after
            // the quorum is complete, and a retransmission repeats a held vote.
            return;
        }
        if let Err(invalid) = self.config.verifier.check_message(&message) {
            let reason = match invalid {
                Invalid::NotMember(_) => DropReason::NotMember,
                _ => DropReason::BadSignature,
            };
            return self.drop_input(Some(from), kind, reason);
        }
        match message.payload {
            Payload::PrePrepare { view, block } => {
                self.on_pre_prepare(from, view, block, message.signature)
            }
            Payload::Prepare { height, hash, .. } => {
                self.on_vote(from, height, hash, message.signature, false)
            }
            Payload::Commit { height, hash, .. } => {
                self.on_vote(from, height, hash, message.signature, true)
            }
            Payload::Checkpoint { height, hash } => {
                self.on_checkpoint(from, height, hash, message.signature)
            }
            Payload::ViewChange(ref change) => {
                let view = change.new_view;
                self.on_view_change(from, view, message)
            }
            Payload::NewView(_) => self.on_new_view(message),
        }
    }

    /// A PREPARE or COMMIT this replica has no use for, so not worth a signature
    /// check: a COMMIT at a height that holds a commit certificate, a PREPARE once
    /// this view's prepared certificate is complete, or the sender's identical vote
    /// already held (checked when it came). At n = 4 that spares two of a member's
    /// six checks per block. A certificate alone does not make a PREPARE needless:
    /// a block a NEW-VIEW re-proposes needs this replica's COMMIT again, which it
    /// sends once prepared in the new view.
    fn needless_vote(&self, message: &Message) -> bool {
        let (height, hash, commit) = match &message.payload {
            Payload::Prepare { height, hash, .. } => (*height, *hash, false),
            Payload::Commit { height, hash, .. } => (*height, *hash, true),
            _ => return false,
        };
        let Some(slot) = self.slots.get(&height) else {
            return false;
        };
        let (complete, votes) = if commit {
            (slot.certificate.is_some(), &slot.commits)
        } else {
            let prepared = slot.prepared.as_ref().is_some_and(|p| p.view == self.view);
            (prepared, &slot.prepares)
        };
        complete || votes.get(&message.from) == Some(&(hash, message.signature))
    }

    /// Refuses messages by their header alone (C&L §4.2: view, watermarks, sender).
    pub(super) fn precheck(&self, message: &Message) -> Result<(), DropReason> {
        let in_window = |height: u64| {
            if height <= self.low() {
                Err(DropReason::Stale)
            } else if height > self.high() {
                Err(DropReason::OutsideWindow)
            } else {
                Ok(())
            }
        };
        let current_view = |view: u64| {
            if view == self.view && self.active {
                Ok(())
            } else if view < self.view {
                Err(DropReason::Stale)
            } else {
                Err(DropReason::WrongView)
            }
        };
        match &message.payload {
            Payload::PrePrepare { view, block } => {
                current_view(*view)?;
                if message.from != self.config.verifier.primary(*view) {
                    return Err(DropReason::NotPrimary);
                }
                in_window(block.header.height)
            }
            Payload::Prepare { view, height, .. } => {
                current_view(*view)?;
                if message.from == self.config.verifier.primary(*view) {
                    return Err(DropReason::NotPrimary);
                }
                in_window(*height)
            }
            Payload::Commit { view, height, .. } => {
                current_view(*view)?;
                in_window(*height)
            }
            Payload::Checkpoint { height, .. } => {
                let interval = self.config.params.checkpoint_interval.max(1);
                if *height <= self.low() {
                    Err(DropReason::Stale)
                } else if !height.is_multiple_of(interval) {
                    Err(DropReason::OutsideWindow)
                } else {
                    Ok(())
                }
            }
            Payload::ViewChange(change) => {
                if change.new_view < self.view || (change.new_view == self.view && self.active) {
                    return Err(DropReason::Stale);
                }
                // An honest replica holds prepared certificates for one window at
                // most; more would only make this replica check signatures in vain.
                if change.prepared.len() as u64 > self.config.window {
                    return Err(DropReason::OutsideWindow);
                }
                let from = message.from;
                let known = if change.new_view == self.view {
                    self.view_changes.contains_key(&(self.view, from))
                } else {
                    self.view_changes
                        .range((change.new_view, 0)..)
                        .any(|((_, member), _)| *member == from)
                };
                if known {
                    Err(DropReason::Duplicate)
                } else {
                    Ok(())
                }
            }
            Payload::NewView(new_view) => {
                if new_view.view < self.view || (new_view.view == self.view && self.active) {
                    Err(DropReason::Stale)
                } else if message.from != self.config.verifier.primary(new_view.view) {
                    Err(DropReason::NotPrimary)
                } else {
                    Ok(())
                }
            }
        }
    }

    pub(super) fn on_pre_prepare(
        &mut self,
        from: MemberIndex,
        view: u64,
        block: Arc<Block>,
        signature: [u8; 64],
    ) {
        let height = block.header.height;
        self.seen_height = self.seen_height.max(height);
        let hash = block.hash();
        let slot = self.slots.entry(height).or_default();
        let known = slot
            .accepted
            .as_ref()
            .filter(|accepted| accepted.view == view)
            .map(|accepted| accepted.hash)
            .or_else(|| slot.candidate.map(|candidate| candidate.header.hash()));
        match known {
            Some(known) if known == hash => {
                // A re-proposal from a NEW-VIEW arrives without its body; keep the body.
                if slot.candidate.is_some() {
                    self.blocks.entry(hash).or_insert(block);
                } else {
                    self.drop_input(Some(from), "pre-prepare", DropReason::Duplicate);
                }
            }
            Some(_) => {
                // Two signed pre-prepares for one height in one view: the primary
                // equivocates, which is provable, so the timer need not run out.
                self.drop_input(Some(from), "pre-prepare", DropReason::Conflicting);
                self.start_view_change(view + 1, ViewChangeCause::Equivocation);
            }
            None => {
                slot.candidate = Some(Candidate {
                    header: block.header,
                    signature,
                });
                self.blocks.insert(hash, block);
            }
        }
    }

    /// A PREPARE or COMMIT: one per sender per height per view; a second, different
    /// one is equivocation and is refused (C&L §4.2).
    pub(super) fn on_vote(
        &mut self,
        from: MemberIndex,
        height: u64,
        hash: Hash,
        signature: [u8; 64],
        commit: bool,
    ) {
        self.seen_height = self.seen_height.max(height);
        let slot = self.slots.entry(height).or_default();
        let votes = if commit {
            &mut slot.commits
        } else {
            &mut slot.prepares
        };
        let kind = if commit { "commit" } else { "prepare" };
        match votes.get(&from) {
            Some((known, _)) if *known == hash => {
                self.drop_input(Some(from), kind, DropReason::Duplicate)
            }
            Some(_) => self.drop_input(Some(from), kind, DropReason::Conflicting),
            None => {
                votes.insert(from, (hash, signature));
            }
        }
    }

    /// A CHECKPOINT (C&L §4.3): a quorum of matching ones make it stable. Votes above the
    /// window are kept too (a bounded number per sender): they tell a lagging replica
    /// how far behind it is.
    pub(super) fn on_checkpoint(
        &mut self,
        from: MemberIndex,
        height: u64,
        hash: Hash,
        signature: [u8; 64],
    ) {
        let slot = usize::from(from);
        self.claims[slot] = self.claims[slot].max(height);
        self.seen_height = self.seen_height.max(height);
        let votes = self.checkpoint_votes.entry(height).or_default();
        match votes.get(&from) {
            Some((known, _)) if *known == hash => {
                return self.drop_input(Some(from), "checkpoint", DropReason::Duplicate)
            }
            Some(_) => return self.drop_input(Some(from), "checkpoint", DropReason::Conflicting),
            None => {
                votes.insert(from, (hash, signature));
            }
        }
        // Each sender holds at most a window's worth of checkpoint votes.
        let limit =
            (self.config.window / self.config.params.checkpoint_interval.max(1)) as usize + 2;
        let held: Vec<u64> = self
            .checkpoint_votes
            .iter()
            .filter(|(_, votes)| votes.contains_key(&from))
            .map(|(height, _)| *height)
            .collect();
        if held.len() > limit {
            if let Some(votes) = self.checkpoint_votes.get_mut(&held[0]) {
                votes.remove(&from);
            }
        }
        self.checkpoint_votes.retain(|_, votes| !votes.is_empty());
        self.try_stabilize(height);
    }

    pub(super) fn try_stabilize(&mut self, height: u64) {
        if height <= self.low() {
            return;
        }
        let Some(votes) = self.checkpoint_votes.get(&height) else {
            return;
        };
        let mut tally: BTreeMap<Hash, Vec<Vote>> = BTreeMap::new();
        for (member, (hash, signature)) in votes {
            tally.entry(*hash).or_default().push(Vote {
                member: *member,
                signature: *signature,
            });
        }
        let quorum = self.quorum();
        let Some((hash, votes)) = tally.into_iter().find(|(_, votes)| votes.len() >= quorum) else {
            return;
        };
        if let Some(applied) = self.slots.get(&height).and_then(|slot| slot.applied) {
            if applied != hash {
                // A quorum vouches for another block than the one applied here:
                // more than f are faulty. Keep the applied chain; refuse to move on.
                return self.drop_input(None, "checkpoint", DropReason::Conflicting);
            }
        }
        self.adopt_stable(CheckpointCertificate {
            height,
            hash,
            votes,
        });
    }

    /// Moves the low watermark to a certified checkpoint and forgets everything at or
    /// below it (C&L §4.3: garbage collection).
    pub(super) fn adopt_stable(&mut self, certificate: CheckpointCertificate) {
        if certificate.height <= self.low() {
            return;
        }
        let height = certificate.height;
        self.out
            .push(Output::Persist(Record::Stable(certificate.clone())));
        self.stable = certificate;
        self.slots = self.slots.split_off(&(height + 1));
        self.checkpoint_votes = self.checkpoint_votes.split_off(&(height + 1));
        self.blocks.retain(|_, block| block.header.height > height);
        if self.tip.header.height < height {
            // The cluster moved on without this replica: fetch what it lacks.
            self.fetch_committed();
        }
    }

    pub(super) fn on_view_change(&mut self, from: MemberIndex, view: u64, message: Message) {
        if view > self.view {
            // Only the sender's latest wish for a higher view counts.
            self.view_changes
                .retain(|(v, member), _| *member != from || *v <= self.view);
        }
        self.view_changes.insert((view, from), message);
        // f + 1 members want a higher view: at least one is honest, so follow the
        // smallest view among the f + 1 highest (C&L §4.5.2, liveness).
        let mut higher: Vec<u64> = self
            .view_changes
            .range((self.view + 1, 0)..)
            .map(|((view, _), _)| *view)
            .collect();
        let f = self.config.verifier.max_faulty();
        if higher.len() > f {
            higher.sort_unstable_by(|a, b| b.cmp(a));
            self.start_view_change(higher[f], ViewChangeCause::Followed);
        }
        self.arm_view_change_timer();
        self.try_send_new_view();
    }

    pub(super) fn on_new_view(&mut self, message: Message) {
        let from = message.from;
        let Payload::NewView(new_view) = &message.payload else {
            return;
        };
        let checkpoint = if self.flaws().trust_new_view {
            highest_checkpoint(&new_view.view_changes)
        } else {
            let (checkpoint, headers) = self.compute_new_view(&new_view.view_changes);
            let given: Vec<Header> = new_view.proposals.iter().map(|p| p.header).collect();
            if headers != given {
                // The new primary's NEW-VIEW does not follow from the view changes it
                // carries: it is faulty, and provably so.
                self.drop_input(Some(from), "new-view", DropReason::InvalidNewView);
                return self.start_view_change(new_view.view + 1, ViewChangeCause::InvalidNewView);
            }
            checkpoint
        };
        self.enter_view(message, checkpoint);
    }

    pub(super) fn on_entry(&mut self, entry: Entry, forwarded: bool, index: &dyn EntryIndex) {
        let id = entry.id();
        if self.pending.contains_key(&id) {
            return self.drop_input(None, "entry", DropReason::Duplicate);
        }
        match index.contains(&id) {
            Ok(false) => {}
            Ok(true) => return self.drop_input(None, "entry", DropReason::Duplicate),
            Err(_) => return self.drop_input(None, "entry", DropReason::InvalidEntry),
        }
        if forwarded {
            let chain_hash = self.chain_hash();
            if entry
                .verify(&chain_hash, self.config.params.max_entry_bytes)
                .is_err()
            {
                return self.drop_input(None, "entry", DropReason::InvalidEntry);
            }
            // Checked at the member a client gave it to, under that member's rules:
            // one that runs other rules (or lies) must not fill this pool with
            // entries no block this member would accept can hold.
            if let Some(Err(reason)) = self.config.policy.as_ref().map(|p| p.check_entry(&entry)) {
                return self.drop_for(
                    None,
                    "forwarded entry",
                    DropReason::InvalidEntry,
                    Some(ChainError::Policy(reason)),
                );
            }
        }
        if entry.is_reconfiguration() {
            // Only a change the membership takes now waits in the pool: one that
            // could never be ordered would hold its entry past every timer.
            let mut membership = (*self.membership).clone();
            let next = self.tip.header.height + 1;
            membership.advance_to(next);
            if !self.change_fits(&entry, &membership, next) {
                return self.drop_input(None, "entry", DropReason::InvalidEntry);
            }
        }
        if self.pending.len() >= self.config.max_pending {
            return self.drop_input(None, "entry", DropReason::PoolFull);
        }
        if !forwarded && !self.active {
            // No primary while views change: every member hears of the entry.
            self.forward_to_all(vec![entry.clone()]);
        } else if !forwarded {
            if !self.is_primary() {
                self.out.push(Output::Forward {
                    to: self.primary(),
                    entry: entry.clone(),
                });
            }
            self.unshared.push_back(id);
        }
        self.pending.insert(
            id,
            Waiting {
                entry,
                since_ms: self.now_ms,
                arrived_ms: self.now_ms,
            },
        );
        self.order.push_back(id);
        self.arrivals += 1;
    }

    pub(super) fn on_mined(&mut self, block: Arc<Block>) {
        let header = &block.header;
        // A find for an older template (one cut before a view change, at the same
        // height and parent) must not stand in for the one mined now.
        let ours = self.mining.is_some_and(|template| {
            Header {
                nonce: template.nonce,
                ..*header
            } == template
        });
        if !ours {
            return;
        }
        self.mining = None;
        if self.active && self.is_primary() && header.meets_difficulty() {
            self.mined = Some(block);
        }
    }

    pub(super) fn on_block(&mut self, block: Arc<Block>) {
        let hash = block.hash();
        let height = block.header.height;
        let wanted = self.slots.get(&height).is_some_and(|slot| {
            slot.candidate.is_some_and(|c| c.header.hash() == hash)
                || slot
                    .certificate
                    .as_ref()
                    .is_some_and(|c| c.block_hash == hash)
        });
        if wanted {
            self.blocks.entry(hash).or_insert(block);
        } else {
            self.drop_input(None, "block", DropReason::Unsolicited);
        }
    }

    /// Catch-up: a block another member says is committed, with the certificate that
    /// proves it (C&L §5.3, state transfer, with blocks instead of pages).
    pub(super) fn on_committed(
        &mut self,
        block: Arc<Block>,
        certificate: CommitCertificate,
        index: &dyn EntryIndex,
    ) {
        let height = block.header.height;
        if height != self.tip.header.height + 1 {
            return self.drop_input(None, COMMITTED_BLOCK, DropReason::Unsolicited);
        }
        let hash = block.hash();
        if self
            .config
            .verifier
            .check_commit(&certificate, height, &hash)
            .is_err()
        {
            return self.drop_input(None, COMMITTED_BLOCK, DropReason::BadSignature);
        }
        match self.validate(
            &block,
            &self.tip.header.clone(),
            &self.tip.log.clone(),
            Vec::new(),
            index,
        ) {
            Ok((ids, log)) => {
                self.apply(block, certificate, ids, log);
                self.caught_up_since_check = true;
                self.last_catch_up_ms = Some(self.now_ms);
                // A whole batch arrived: the peer likely has more, and waiting for the
                // next check would pace catch-up at a batch per check.
                let batch_done = self.fetching_after.is_some_and(|after| {
                    height >= after.saturating_add(self.config.catch_up_batch)
                });
                if batch_done {
                    self.fetch_committed();
                }
            }
            Err(error) => {
                self.drop_for(None, COMMITTED_BLOCK, DropReason::InvalidBlock, Some(error))
            }
        }
    }

    pub(super) fn on_tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let now = self.now_ms;
        if self.vouched_height() > self.tip.header.height {
            self.behind_since_ms.get_or_insert(now);
        } else {
            self.behind_since_ms = None;
        }
        if self.active {
            let timeout = self.view_change_timeout();
            self.share_waiting(now.saturating_sub(timeout / 2));
            // While catching up, entries wait for the blocks being fetched; their
            // timers count from the last one applied.
            let restarted = self.last_catch_up_ms.unwrap_or(0);
            let stalled_ending = self.epoch_ending()
                && now.saturating_sub(self.progress_ms.max(restarted)) >= timeout;
            // Only when the oldest would start a view change: not at every tick.
            let overdue =
                |pending: &Waiting| now.saturating_sub(pending.since_ms.max(restarted)) >= timeout;
            if self.oldest_pending().is_some_and(overdue) && !self.timers_wait() {
                self.drop_unholdable(now.saturating_sub(timeout));
            }
            let waited = self
                .oldest_pending()
                .map(|pending| now.saturating_sub(pending.since_ms.max(restarted)));
            let cause = if stalled_ending {
                Some(ViewChangeCause::EpochStalled)
            } else {
                waited.filter(|waited| *waited >= timeout).map(|waited_ms| {
                    ViewChangeCause::EntryWaited {
                        waited_ms,
                        pending: self.pending.len(),
                    }
                })
            };
            if let Some(cause) = cause.filter(|_| !self.timers_wait()) {
                self.share_overdue(now.saturating_sub(timeout));
                self.start_view_change(self.view + 1, cause);
            }
        } else if self
            .view_change_deadline
            .is_some_and(|deadline| now >= deadline)
        {
            // The new primary did not deliver a NEW-VIEW in time (C&L §4.5.2).
            self.start_view_change(self.view + 1, ViewChangeCause::NewViewLate);
        }
        if now.saturating_sub(self.last_retransmit_ms) >= self.config.timing.retransmit_ms {
            self.last_retransmit_ms = now;
            self.retransmit();
            self.check_lagging();
        }
    }

    /// Entries waiting since before `since` go to every member, as a PBFT client
    /// sends a late request to all replicas (C&L §4.1): each then runs its own timer,
    /// so a primary that censors them faces f + 1 view changes, not one.
    pub(super) fn share_overdue(&mut self, since: u64) {
        let limit = self.config.max_block_entries;
        let overdue: Vec<Entry> = self
            .order
            .iter()
            .filter_map(|id| self.pending.get(id))
            .filter(|pending| pending.since_ms <= since)
            .take(limit)
            .map(|pending| pending.entry.clone())
            .collect();
        self.forward_to_all(overdue);
    }

    /// Entries waiting since before `since` that this replica's rules refuse as a
    /// block of their own leave the pool before they start a view change: no
    /// primary could order them (a stateful plugin that took them at submit and
    /// refuses them now, a block rule entry hooks do not see), and views would
    /// change for them without end. Each replica judges by its own rules, so a
    /// primary that censors an entry the rules take still faces the timers.
    fn drop_unholdable(&mut self, since: u64) {
        let Some(policy) = self.config.policy.clone() else {
            return;
        };
        let overdue: Vec<Entry> = self
            .order
            .iter()
            .filter_map(|id| self.pending.get(id))
            .filter(|pending| pending.since_ms <= since)
            .take(self.config.max_block_entries)
            .map(|pending| pending.entry.clone())
            .collect();
        let tip = &self.tip;
        let timestamp = self.now_ms.max(tip.header.timestamp_ms + 1);
        let header = Header::child(&tip.header, &tip.log, timestamp, tip.header.difficulty);
        let block = Block {
            header,
            entries: overdue,
        };
        // A rule about the block itself refuses none of them in particular.
        let refused =
            fit_block(policy.as_ref(), &block).map_or_else(|_| Vec::new(), |fit| fit.refused);
        for (i, reason) in refused {
            self.refuse_pooled(&block.entries[i].id(), reason);
        }
    }

    /// This replica's own clients' entries still waiting since before `since` (half a
    /// timeout) go to every member, as a PBFT client resends a late request to all
    /// replicas (C&L §4.1): the others' timers then run out soon after this one's,
    /// so a dead or censoring primary is voted out in 1.5 timeouts, not 2.
    pub(super) fn share_waiting(&mut self, since: u64) {
        let mut late = Vec::new();
        while let Some(id) = self.unshared.front() {
            match self.pending.get(id) {
                Some(pending) if pending.since_ms > since => break,
                Some(pending) => late.push(pending.entry.clone()),
                None => {}
            }
            self.unshared.pop_front();
        }
        self.forward_to_all(late);
    }

    pub(super) fn forward_to_all(&mut self, entries: Vec<Entry>) {
        let me = self.config.me;
        let members = self.config.verifier.len() as MemberIndex;
        for entry in entries {
            for to in (0..members).filter(|m| *m != me) {
                self.out.push(Output::Forward {
                    to,
                    entry: entry.clone(),
                });
            }
        }
    }

    pub(super) fn oldest_pending(&mut self) -> Option<&Waiting> {
        while let Some(id) = self.order.front() {
            if self.pending.contains_key(id) {
                break;
            }
            self.order.pop_front();
        }
        self.order.front().and_then(|id| self.pending.get(id))
    }

    /// Messages are sent once over a network that may lose them; what is still
    /// needed is sent again (C&L §5.2).
    pub(super) fn retransmit(&mut self) {
        let tip = self.tip.header.height;
        let mut again: Vec<Message> = Vec::new();
        if self.active {
            for slot in self.slots.range(tip + 1..).map(|(_, slot)| slot) {
                again.extend(slot.sent.iter().cloned());
            }
            // Backups that missed the NEW-VIEW cannot vote in this view.
            let undecided = self.slots.range(tip + 1..).next().is_some();
            if undecided && self.is_primary() {
                if let Some(new_view) = &self.new_view {
                    again.push(new_view.clone());
                }
            }
        } else if let Some(message) = self.view_changes.get(&(self.view, self.config.me)) {
            again.push(message.clone());
        }
        if let Some(checkpoint) = &self.my_checkpoint {
            again.push(checkpoint.clone());
        }
        self.out.extend(again.into_iter().map(Output::Broadcast));
        let missing = self.slots.range(tip + 1..).filter_map(|(height, slot)| {
            let hash = slot
                .fetching
                .filter(|hash| !self.blocks.contains_key(hash))?;
            Some(Output::FetchBlock {
                height: *height,
                hash,
            })
        });
        self.out.extend(missing.collect::<Vec<_>>());
    }

    /// A replica that missed votes cannot prepare or apply above them (the chaining
    /// rule, in-order apply), so when others are ahead and the tip has not moved, it
    /// fetches committed blocks.
    /// A catch-up that just applied blocks goes on at once. An idle cluster sends
    /// nothing that would show a restarted replica how far behind it is, so a tip
    /// that has not moved for [`PROBE_CHECKS`] checks asks a peer anyway: an
    /// up-to-date peer answers nothing.
    pub(super) fn check_lagging(&mut self) {
        let tip = self.tip.header.height;
        let stalled = self.seen_height > tip && self.tip_at_last_check == tip;
        let continuing = self.caught_up_since_check;
        if tip == self.tip_at_last_check {
            self.quiet_checks = self.quiet_checks.saturating_add(1);
        } else {
            self.quiet_checks = 0;
        }
        let probe = self.quiet_checks > 0 && self.quiet_checks.is_multiple_of(PROBE_CHECKS);
        if self.vouched_height() > tip || stalled || continuing || probe {
            self.fetch_committed();
        }
        self.tip_at_last_check = tip;
        self.caught_up_since_check = false;
    }

    /// The highest checkpoint f + 1 members signed: at least one honest member has
    /// applied that far.
    pub(super) fn vouched_height(&self) -> u64 {
        let f = self.config.verifier.max_faulty();
        let mut claims = self.claims.clone();
        claims.sort_unstable_by(|a, b| b.cmp(a));
        claims.get(f).copied().unwrap_or(0)
    }

    /// Whether this replica knows, from signed evidence, that the others are ahead:
    /// an honest member checkpointed above its tip, or it applied a block fetched
    /// with its certificate within the last view-change timeout.
    pub fn catching_up(&self) -> bool {
        self.vouched_height() > self.tip.header.height || self.caught_up_recently()
    }

    fn caught_up_recently(&self) -> bool {
        self.last_catch_up_ms.is_some_and(|at| self.recent(at))
    }

    fn recent(&self, at: u64) -> bool {
        self.now_ms.saturating_sub(at) < self.config.timing.view_change_timeout_ms
    }

    /// Whether this replica's timers wait while it catches up ([`Replica::catching_up`]):
    /// the others are making progress, and a view change it started alone would
    /// leave it in a view nobody else is in. A claim can outlive what backs it (at
    /// f = 0 one member vouches alone, and it may have lost its disk since): behind
    /// for a whole timeout with nothing applied, the timers run again.
    fn timers_wait(&self) -> bool {
        let behind = self.vouched_height() > self.tip.header.height
            && self
                .behind_since_ms
                .is_none_or(|since| self.recent(since.max(self.progress_ms)));
        behind || self.caught_up_recently()
    }

    pub(super) fn fetch_committed(&mut self) {
        self.fetching_after = Some(self.tip.header.height);
        self.out.push(Output::FetchCommitted {
            after: self.tip.header.height,
            entered_view: self.entered(),
        });
    }
}
