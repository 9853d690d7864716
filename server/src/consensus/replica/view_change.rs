//! View changes (C&L §4.4, §4.5.2): leaving a view, the timers, answering a member
//! stuck in an older view change, and the new primary's NEW-VIEW, which every
//! replica recomputes before it enters the view.

use ed25519_dalek::Signer;

use super::super::durable::Record;
use super::super::message::{
    CheckpointCertificate, MemberIndex, Message, NewView, Payload, PreparedCertificate, Proposal,
    ViewChange,
};
use super::{Candidate, Output, Replica, ViewChangeCause};
use crate::chain::{Hash, Header};

impl Replica {
    /// Leaves the current view for `target` (C&L §4.4): stop taking part in the old
    /// view, persist that, then send VIEW-CHANGE with the stable checkpoint and every
    /// prepared certificate above it.
    pub(super) fn start_view_change(&mut self, target: u64, cause: ViewChangeCause) {
        // An abstaining replica learns views from the others' NEW-VIEWs.
        if target <= self.view || self.abstains_from_views() {
            return;
        }
        self.view = target;
        self.view_change_cause = Some((target, cause));
        self.active = false;
        self.forget_view_work();
        self.view_changes = self.view_changes.split_off(&(target, 0));
        self.view_change_deadline = None;
        self.consecutive_view_changes = self.consecutive_view_changes.saturating_add(1);
        self.out
            .push(Output::Persist(Record::ViewChange { view: target }));
        self.send_view_change();
        self.try_send_new_view();
    }

    /// The timer for the next view starts only once a quorum wants this one: a
    /// replica that timed out alone waits for the others instead of running ahead
    /// through views nobody joins (C&L §4.5.2).
    pub(super) fn arm_view_change_timer(&mut self) {
        if self.active || self.view_change_deadline.is_some() {
            return;
        }
        if self.wanting(self.view).count() >= self.quorum() {
            self.view_change_deadline =
                Some(self.now_ms.saturating_add(self.view_change_timeout()));
        }
    }

    /// The VIEW-CHANGE messages received for `view`.
    pub(super) fn wanting(&self, view: u64) -> impl Iterator<Item = &Message> {
        self.view_changes
            .range((view, 0)..=(view, MemberIndex::MAX))
            .map(|(_, message)| message)
    }

    /// The last view this replica entered: it prepared nothing in any view above it.
    pub(super) fn entered(&self) -> u64 {
        match self.new_view.as_ref().map(|m| &m.payload) {
            Some(Payload::NewView(new_view)) => new_view.view,
            _ => 0,
        }
    }

    /// This replica's VIEW-CHANGE for `view`: its stable checkpoint and every
    /// prepared certificate above it. True for any view above the one it last
    /// entered, since it prepares nothing while changing views.
    pub(super) fn view_change(&self, view: u64) -> Message {
        let low = self.low();
        self.sign(Payload::ViewChange(ViewChange {
            new_view: view,
            checkpoint: self.stable.clone(),
            prepared: self
                .slots
                .range(low + 1..)
                .filter_map(|(_, slot)| slot.prepared.clone())
                .collect(),
        }))
    }

    pub(super) fn send_view_change(&mut self) {
        if self.abstains_from_views() {
            return;
        }
        let message = self.view_change(self.view);
        self.view_changes
            .insert((self.view, self.config.me), message.clone());
        self.out.push(Output::Broadcast(message));
        self.arm_view_change_timer();
    }

    /// A member still asks for a view this replica has left or entered: it lost
    /// messages it needs, and the senders no longer resend them. Left alone, a
    /// replica that timed out ahead of the rest and the rest waiting for its
    /// VIEW-CHANGE would wait for each other forever. So it gets the NEW-VIEW of
    /// this view if this replica is in one, else this replica's VIEW-CHANGE for the
    /// view it asks for (C&L §5.2: what a replica lacks is sent again). Verified
    /// and answered at most once per retransmit interval, so replays cost little.
    pub(super) fn answer_stale_view_change(&mut self, message: &Message, view: u64) {
        let from = message.from;
        let last = self.answered[usize::from(from)];
        let interval = self.config.timing.retransmit_ms / 2;
        if last.is_some_and(|at| self.now_ms.saturating_sub(at) < interval) {
            return;
        }
        let digest = message.digest(&self.signing_domain());
        if self
            .config
            .verifier
            .check(from, &digest, &message.signature)
            .is_err()
        {
            return;
        }
        let answer = if view <= self.entered() {
            self.new_view.clone()
        } else if view < self.view && !self.abstains_from_views() {
            Some(self.view_change(view))
        } else {
            None
        };
        if let Some(answer) = answer {
            self.answered[usize::from(from)] = Some(self.now_ms);
            self.out.push(Output::Send {
                to: from,
                message: answer,
            });
        }
    }

    /// The new primary, holding a quorum of view changes for its view, computes and sends
    /// NEW-VIEW (C&L §4.4).
    pub(super) fn try_send_new_view(&mut self) {
        if self.active || !self.is_primary() || self.abstains_from_views() {
            return;
        }
        let view = self.view;
        let changes: Vec<Message> = self.wanting(view).cloned().collect();
        if changes.len() < self.quorum() {
            return;
        }
        let (checkpoint, headers) = self.compute_new_view(&changes);
        let domain = self.signing_domain();
        let proposals = headers
            .into_iter()
            .map(|header| {
                let digest = super::super::message::pre_prepare_digest(
                    &domain,
                    view,
                    header.height,
                    &header.hash(),
                );
                Proposal {
                    header,
                    signature: self.config.key.sign(digest.as_bytes()).to_bytes(),
                }
            })
            .collect();
        let message = self.sign(Payload::NewView(NewView {
            view,
            view_changes: changes,
            proposals,
        }));
        self.enter_view(message.clone(), checkpoint);
        self.out.push(Output::Broadcast(message));
    }

    /// The re-proposals a NEW-VIEW must carry: from the highest stable checkpoint up,
    /// at each height the prepared certificate of the highest view, while each links
    /// to the one below. Above the first height without one nothing can have been
    /// committed (the chaining rule), so the re-proposals stop there (C&L §4.4,
    /// without null requests, which a hash chain cannot hold).
    pub fn compute_new_view(&self, changes: &[Message]) -> (CheckpointCertificate, Vec<Header>) {
        let checkpoint = highest_checkpoint(changes);
        let mut previous = checkpoint.hash;
        let mut headers = Vec::new();
        let certificates: Vec<&PreparedCertificate> = changes
            .iter()
            .filter_map(|m| match &m.payload {
                Payload::ViewChange(change) => Some(change.prepared.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut height = checkpoint.height + 1;
        while height <= checkpoint.height.saturating_add(self.config.window) {
            let best = certificates
                .iter()
                .filter(|c| c.header.height == height)
                .max_by_key(|c| (c.view, c.header.hash()));
            match best {
                Some(certificate) if certificate.header.prev_hash == previous => {
                    previous = certificate.header.hash();
                    headers.push(certificate.header);
                }
                _ => break,
            }
            height += 1;
        }
        (checkpoint, headers)
    }

    /// Forgets what belonged to the view being left: the block being mined, and every
    /// slot's candidate, votes, sent messages and pending fetch.
    fn forget_view_work(&mut self) {
        self.mined = None;
        if self.mining.take().is_some() {
            self.out.push(Output::CancelMining);
        }
        for slot in self.slots.values_mut() {
            slot.candidate = None;
            slot.prepares.clear();
            slot.commits.clear();
            slot.sent.clear();
            slot.fetching = None;
            slot.propose_again = false;
        }
    }

    /// Enters the view a NEW-VIEW starts: persist it, adopt its checkpoint, take its
    /// re-proposals as this view's pre-prepares, and restart the entry timers.
    pub(super) fn enter_view(&mut self, message: Message, checkpoint: CheckpointCertificate) {
        let Payload::NewView(new_view) = &message.payload else {
            return;
        };
        let view = new_view.view;
        let proposals = new_view.proposals.clone();
        self.out
            .push(Output::Persist(Record::NewView(message.clone())));
        if view > self.view {
            self.forget_view_work();
        }
        self.view = view;
        self.active = true;
        self.view_change_deadline = None;
        self.new_view = Some(message);
        self.view_changes = self.view_changes.split_off(&(view + 1, 0));
        self.adopt_stable(checkpoint);
        let low = self.low();
        for proposal in proposals {
            let height = proposal.header.height;
            if height <= low {
                continue;
            }
            self.slots.entry(height).or_default().candidate = Some(Candidate {
                header: proposal.header,
                signature: proposal.signature,
            });
        }
        // Every waiting entry gets a full timeout under the new primary, which has
        // to hear of it: forward what this replica holds.
        let now = self.now_ms;
        self.progress_ms = now;
        let primary = self.primary();
        let me = self.config.me;
        let mut forward = Vec::new();
        for id in &self.order {
            if let Some(pending) = self.pending.get_mut(id) {
                pending.since_ms = now;
                if primary != me {
                    forward.push(pending.entry.clone());
                }
            }
        }
        self.out.extend(
            forward
                .into_iter()
                .map(|entry| Output::Forward { to: primary, entry }),
        );
    }
}

/// The checkpoint with the highest height among VIEW-CHANGE messages (C&L §4.4: min-s).
pub(super) fn highest_checkpoint(changes: &[Message]) -> CheckpointCertificate {
    changes
        .iter()
        .filter_map(|m| match &m.payload {
            Payload::ViewChange(change) => Some(&change.checkpoint),
            _ => None,
        })
        .max_by_key(|c| c.height)
        .cloned()
        .unwrap_or(CheckpointCertificate {
            height: 0,
            hash: Hash([0; 32]),
            votes: Vec::new(),
        })
}
