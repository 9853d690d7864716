//! View changes step by step (C&L §4.4, §4.5.2), with exact outputs.

use crate::consensus::harness::*;
use crate::consensus::{Input, Payload, ViewChangeCause};
use crate::testing;

/// §5.2: what a replica lacks is sent again. One that still asks for a view this
/// replica has entered gets its NEW-VIEW; one that asks for a view this replica
/// left unentered gets this replica's VIEW-CHANGE for it, so a replica that timed
/// out ahead never leaves the others short of a quorum. Answers need a valid
/// signature and come at most once per retransmit interval.
#[test]
fn members_stuck_in_an_older_view_change_get_what_they_lack() {
    let setup = Setup::new(4);
    let change = |from: usize, view: u64| empty_view_change(&setup, from, view);

    // Member 1, primary of view 1, enters it on the view changes of 2 and 3.
    let mut primary = setup.replica(1);
    assert!(message(&mut primary, change(2, 1)).is_empty());
    let outputs = message(&mut primary, change(3, 1));
    assert_eq!(outputs[0], "persist view-change v1");
    assert!(primary.is_active());
    // Member 3 missed the NEW-VIEW and resends its VIEW-CHANGE.
    assert_eq!(
        message(&mut primary, change(3, 1)),
        ["send 3 new-view v1 proposals 0", "dropped Stale"]
    );
    assert_eq!(message(&mut primary, change(3, 1)), ["dropped Stale"]);

    // Member 2 reaches a quorum for view 1, waits in vain, and moves on to view 2.
    let mut ahead = setup.replica(2);
    message(&mut ahead, change(1, 1));
    message(&mut ahead, change(3, 1));
    // The timeout has doubled once (§4.5.2).
    let later = setup.now + 2 * TIMING.view_change_timeout_ms;
    let outputs = feed(&mut ahead, Input::Tick { now_ms: later });
    assert_eq!(
        outputs,
        [
            "persist view-change v2",
            "broadcast view-change v2 prepared 0"
        ]
    );
    assert_eq!(
        ahead.view_change_cause(),
        Some((2, ViewChangeCause::NewViewLate))
    );
    // A forgery in member 3's name gets nothing; member 3's own request gets member
    // 2's VIEW-CHANGE for view 1, which member 1 may never have received.
    assert_eq!(message(&mut ahead, forged(change(3, 1))), ["dropped Stale"]);
    assert_eq!(
        message(&mut ahead, change(3, 1)),
        ["send 3 view-change v1 prepared 0", "dropped Stale"]
    );
}

/// §4.4: the new primary, holding a quorum of view changes, sends NEW-VIEW re-proposing
/// the prepared block; a backup recomputes it, accepts it and prepares again in the
/// new view; a NEW-VIEW whose proposals do not follow is refused and the backup moves
/// on to the next view.
#[test]
fn new_view_is_computed_sent_and_checked() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);
    let (mut replicas, new_view) = prepared_in_view_0_then_new_view(&setup, &block);
    let backups = &mut replicas[1..];

    let backup = &mut backups[0]; // member 2
    let outputs = message(backup, new_view.clone());
    assert_eq!(
        outputs,
        [
            "persist new-view v1 proposals 1",
            "forward 1",
            "persist accepted v1 h1",
            "broadcast prepare v1 h1"
        ]
    );

    let Payload::NewView(mut forged) = new_view.payload.clone() else {
        unreachable!()
    };
    forged.proposals.clear();
    let forged = setup.sign(1, Payload::NewView(forged));
    let backup = &mut backups[1]; // member 3
    let outputs = message(backup, forged);
    assert_eq!(
        outputs,
        [
            "dropped InvalidNewView",
            "persist view-change v2",
            "broadcast view-change v2 prepared 1"
        ]
    );
}

/// A replica that applied a block a NEW-VIEW re-proposes prepares it again and sends
/// its COMMIT, so that the members that had not committed it can: the new view's
/// PREPAREs still count there, though the height holds a commit certificate.
#[test]
fn a_re_proposed_block_applied_here_gets_its_commit_again() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);
    let (mut replicas, new_view) = prepared_in_view_0_then_new_view(&setup, &block);
    let backup = &mut replicas[2]; // member 3
    let certificate = testing::certify(&setup.keys[..3], &block);
    let applied = feed(
        backup,
        Input::Committed {
            block: block.clone(),
            certificate,
        },
    );
    assert!(applied.contains(&"apply h1".to_owned()), "{applied:?}");
    let outputs = message(backup, new_view);
    assert!(
        outputs.contains(&"broadcast prepare v1 h1".to_owned()),
        "{outputs:?}"
    );
    let outputs = message(backup, vote(&setup, 2, false, 1, &block));
    assert!(
        outputs.contains(&"broadcast commit v1 h1".to_owned()),
        "{outputs:?}"
    );
}

/// A replica that entered a later view hands its NEW-VIEW to a peer whose catch-up
/// request shows it never entered that view; the peer, left behind in view 0 by an
/// idle cluster, joins view 1 with it.
#[test]
fn a_peer_behind_in_views_gets_the_new_view_with_its_catch_up() {
    let setup = Setup::new(4);
    let genesis = setup.genesis();
    let block = setup.block(&genesis.header, &genesis.log, 1);
    let (replicas, new_view) = prepared_in_view_0_then_new_view(&setup, &block);
    let primary = &replicas[0];
    assert_eq!(primary.new_view_since(0), Some(&new_view));
    assert_eq!(primary.new_view_since(1), None);
    let mut behind = setup.replica(0);
    let outputs = message(&mut behind, new_view);
    assert_eq!(outputs[0], "persist new-view v1 proposals 1");
    assert!(behind.is_active());
    assert_eq!(behind.view(), 1);
    assert_eq!(behind.new_view_since(0).map(|m| m.from), Some(1));
}
