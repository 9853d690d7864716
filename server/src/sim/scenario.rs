//! The scenarios: a hostile network, targeted losses and Byzantine members, and the
//! catalogue that CI runs and the sweep covers.

use super::Behaviour;
use crate::consensus::{Flaws, MemberIndex};

/// The hostile network.
#[derive(Clone, Copy, Debug)]
pub struct Network {
    /// Probability a message is lost before the network heals.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Delivery delay range (reordering follows from it), ms.
    pub delay_ms: (u64, u64),
    /// Whether partitions come and go before the network heals.
    pub partitions: bool,
    /// Whether honest replicas crash and restart from what they persisted.
    pub crashes: bool,
    /// Whether a crash may take the disk with it: the replica then joins again from
    /// a snapshot the others serve, checked as `ledgerd join` checks it.
    pub disk_loss: bool,
}

/// A targeted fault: messages of one kind to one member are lost for a while.
#[derive(Clone, Copy, Debug)]
pub struct Cut {
    /// The message kind ([`Message::kind`]), or `"committed-blocks"` for catch-up
    /// answers.
    pub kind: &'static str,
    /// Only messages about this height, if set.
    pub height: Option<u64>,
    /// The receiver, or every member if unset.
    pub to: Option<MemberIndex>,
    /// When the cut starts and ends, virtual ms after the start.
    pub from_ms: u64,
    /// See `from_ms`.
    pub until_ms: u64,
}

/// One adversarial setting; a seed fills in the details.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its name, for reports and `--scenario`.
    pub name: String,
    /// Members, n (any size; f = ⌊(n − 1) / 3⌋ of them may be Byzantine).
    pub members: usize,
    /// Byzantine members and what each does.
    pub byzantine: Vec<(MemberIndex, Behaviour)>,
    /// The network.
    pub network: Network,
    /// Deliberate protocol breaks in every honest replica.
    pub flaws: Flaws,
    /// How long faults last before the network heals, virtual ms.
    pub faulty_ms: u64,
    /// How long after healing liveness must be reached, virtual ms.
    pub settle_ms: u64,
    /// Client entries submitted, spread over the run.
    pub entries: usize,
    /// Targeted losses.
    pub cuts: Vec<Cut>,
    /// A deliberate flaw: joining members trust snapshots without checking them.
    pub unchecked_snapshots: bool,
    /// Membership changes the chain's admin submits, one after the other, each once
    /// the one before it is in force.
    pub changes: Vec<Reconfigure>,
    /// Nodes outside the genesis membership, which follow the chain from the start
    /// and which changes may add and promote (positions `members..`).
    pub newcomers: usize,
}

/// A membership change a scenario makes, naming nodes by their position: genesis
/// members first, then newcomers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconfigure {
    /// Adds the node as a learner.
    Add(MemberIndex),
    /// Promotes the learner to member.
    Promote(MemberIndex),
    /// Removes the member or learner.
    Remove(MemberIndex),
}

/// Adds the node as a learner, then promotes it.
fn grow(node: MemberIndex) -> [Reconfigure; 2] {
    [Reconfigure::Add(node), Reconfigure::Promote(node)]
}

impl Scenario {
    /// A scenario with `members` replicas, a lossy, reordering network, no Byzantine
    /// member and no flaw.
    pub fn new(name: &str, members: usize) -> Scenario {
        Scenario {
            name: name.to_owned(),
            members,
            byzantine: Vec::new(),
            network: Network {
                drop: 0.05,
                duplicate: 0.02,
                delay_ms: (1, 30),
                partitions: false,
                crashes: false,
                disk_loss: false,
            },
            flaws: Flaws::default(),
            faulty_ms: 4_000,
            settle_ms: 30_000,
            entries: 40,
            cuts: Vec::new(),
            unchecked_snapshots: false,
            changes: Vec::new(),
            newcomers: 0,
        }
    }

    /// The named scenarios CI runs and the sweep covers: every n from 1 to 10 under
    /// each network fault, and each Byzantine behaviour by f members wherever f ≥ 1
    /// (below n = 4 no member may lie).
    pub fn catalogue() -> Vec<Scenario> {
        let mut all = Vec::new();
        for members in 1..=10 {
            let f = (members - 1) / 3;
            all.push(Scenario::new(&format!("lossy-{members}"), members));
            let mut partitions = Scenario::new(&format!("partitions-{members}"), members);
            partitions.network.partitions = true;
            all.push(partitions);
            let mut crashes = Scenario::new(&format!("crashes-{members}"), members);
            crashes.network.crashes = true;
            all.push(crashes);
            if members >= 2 {
                // The view-0 primary goes, while members crash and restart (one may
                // lose its disk, and rejoin in either epoch): its epoch's last blocks
                // and the next epoch's first view change.
                let mut remove = Scenario::new(&format!("remove-primary-{members}"), members);
                remove.network.crashes = true;
                // Disk loss where both memberships keep three members: a member of
                // two cannot do without the other (README, "Joining from a snapshot").
                remove.network.disk_loss = members >= 4;
                remove.changes = vec![Reconfigure::Remove(0)];
                all.push(remove);
            }
            if members >= 3 {
                // Two members go, one after the other, across partitions.
                let mut shrink = Scenario::new(&format!("shrink-{members}"), members);
                shrink.network.partitions = true;
                let last = members as MemberIndex - 1;
                shrink.changes = vec![Reconfigure::Remove(last), Reconfigure::Remove(1)];
                all.push(shrink);
            }
            if members < 10 {
                // One more member, while members crash and restart (a change made
                // with a member down; one may lose its disk, the newcomer too).
                let newcomer = members as MemberIndex;
                let mut add = Scenario::new(&format!("grow-{members}"), members);
                add.network.crashes = true;
                add.network.disk_loss = members >= 3;
                add.newcomers = 1;
                add.changes = grow(newcomer).to_vec();
                all.push(add);
                // The view-0 primary replaced by a newcomer, across partitions.
                let mut replace = Scenario::new(&format!("replace-primary-{members}"), members);
                replace.network.partitions = true;
                replace.newcomers = 1;
                replace.changes = [grow(newcomer).as_slice(), &[Reconfigure::Remove(0)]].concat();
                all.push(replace);
            }
            if members == 4 {
                // 4 -> 5 -> 7 -> 4 on a lossy network.
                let mut cycle = Scenario::new("grow-and-shrink-4", members);
                cycle.newcomers = 3;
                cycle.faulty_ms = 8_000;
                cycle.settle_ms = 60_000;
                cycle.changes = [
                    grow(4).as_slice(),
                    &grow(5),
                    &grow(6),
                    &[
                        Reconfigure::Remove(0),
                        Reconfigure::Remove(5),
                        Reconfigure::Remove(2),
                    ],
                ]
                .concat();
                all.push(cycle);
            }
            if members >= 2 {
                let mut disk_loss = Scenario::new(&format!("disk-loss-{members}"), members);
                disk_loss.network.crashes = true;
                disk_loss.network.disk_loss = true;
                all.push(disk_loss);
            }
            if f == 0 {
                continue;
            }
            for behaviour in Behaviour::ALL {
                let mut scenario =
                    Scenario::new(&format!("{}-{members}", behaviour.name()), members);
                // Member 0 is view 0's primary and member 1 view 1's, the first to
                // send a NEW-VIEW; primaries rotate, so each Byzantine member gets
                // its turn as views change.
                let first = MemberIndex::from(behaviour == Behaviour::BogusNewView);
                scenario.byzantine = (first..first + f as MemberIndex)
                    .map(|m| (m, behaviour))
                    .collect();
                // Partitions with liars where quorums are tightest: at n = 4 the
                // paper's size, at 5 and 6 the sizes where 2f + 1 would be unsafe.
                scenario.network.partitions = (4..=6).contains(&members);
                // A liar about snapshots needs members that lose their disks to lie to.
                if behaviour == Behaviour::LyingSnapshots {
                    scenario.network.crashes = true;
                    scenario.network.disk_loss = true;
                }
                all.push(scenario);
                // The liars stay while the honest grow by one and then lose their last
                // (n = 4: q goes 3 -> 4 -> 3; n = 7: 5 -> 6 -> 5).
                if members == 4 || members == 7 {
                    let newcomer = members as MemberIndex;
                    let mut changing = Scenario::new(
                        &format!("{}-reconfigure-{members}", behaviour.name()),
                        members,
                    );
                    changing.byzantine = (first..first + f as MemberIndex)
                        .map(|m| (m, behaviour))
                        .collect();
                    changing.newcomers = 1;
                    changing.changes = [
                        grow(newcomer).as_slice(),
                        &[Reconfigure::Remove(newcomer - 1)],
                    ]
                    .concat();
                    all.push(changing);
                }
            }
        }
        all
    }

    /// The catalogue scenario called `name`.
    pub fn named(name: &str) -> Option<Scenario> {
        Scenario::catalogue().into_iter().find(|s| s.name == name)
    }
}
