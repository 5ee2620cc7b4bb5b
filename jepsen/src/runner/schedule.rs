//! The nemesis schedule: which fault, on which nodes, when. A pure function
//! of the seed, the enabled kinds, the node count and the time limit, so a
//! run can be replayed fault for fault.
//!
//! The schedule alternates: a fault, then a heal of that fault, then the
//! next fault. Kinds are taken from a seeded shuffle of the enabled kinds,
//! reshuffled after each round, so every kind appears once before any
//! kind appears twice (and every kind appears at all when the time limit
//! leaves room for one round; [`Schedule::new`] sizes the periods so).
//! Which node leads is only known at run time: [`Target::Leader`] is
//! resolved then, and carries a seeded node to hit when no leader is
//! known at that moment (an election in progress), so that no fault hits
//! nobody.

use std::fmt;
use std::time::Duration;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// Cut the nodes into two random halves.
    PartitionHalves,
    /// Cut the leader off from every other node.
    PartitionLeader,
    /// Two halves that share one bridge node, which reaches both.
    PartitionBridge,
    /// Packets from one node to another are dropped; the reverse flows.
    OneWay,
    /// Some nodes drop a fraction of what they receive.
    Loss,
    /// `kill -9` a node; the heal restarts it.
    Kill,
    /// `SIGSTOP` a node; the heal sends `SIGCONT`.
    Pause,
    /// Move a node's wall clock (libfaketime); the heal moves it back.
    Skew,
    /// Fill a node's data directory (a small tmpfs); the heal frees it and
    /// restarts the node.
    Disk,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub(crate) const ALL: [Kind; 9] = [
        Kind::PartitionHalves,
        Kind::PartitionLeader,
        Kind::PartitionBridge,
        Kind::OneWay,
        Kind::Loss,
        Kind::Kill,
        Kind::Pause,
        Kind::Skew,
        Kind::Disk,
    ];

    /// The name on the command line and in `nemesis.jsonl`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::PartitionHalves => "partition-halves",
            Kind::PartitionLeader => "partition-leader",
            Kind::PartitionBridge => "partition-bridge",
            Kind::OneWay => "one-way",
            Kind::Loss => "loss",
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Skew => "skew",
            Kind::Disk => "disk",
        }
    }

    /// Parses `--nemesis`: comma-separated names; `partition` stands for
    /// the three partitions, `all` for every kind, `none` for no fault.
    pub(crate) fn parse_list(list: &str) -> Result<Vec<Kind>, String> {
        let mut kinds = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let named: Vec<Kind> = match item {
                "all" => Kind::ALL.to_vec(),
                "none" => Vec::new(),
                "partition" => vec![
                    Kind::PartitionHalves,
                    Kind::PartitionLeader,
                    Kind::PartitionBridge,
                ],
                _ => match Kind::ALL.into_iter().find(|kind| kind.name() == item) {
                    Some(kind) => vec![kind],
                    None => {
                        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                        return Err(format!(
                            "unknown nemesis {item:?}; use all, none, partition or some of: {}",
                            names.join(", ")
                        ));
                    }
                },
            };
            for kind in named {
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
        }
        kinds.sort_unstable();
        Ok(kinds)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which node(s) a fault hits: chosen by the seed, or the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// These node ids.
    Nodes(Vec<u64>),
    /// Whoever leads when the fault starts; `otherwise` if no node says
    /// it leads then.
    Leader {
        /// The node hit when the leader is unknown.
        otherwise: u64,
    },
}

/// One fault with its seeded parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// No traffic between `left` and `right` (both directions); nodes in
    /// neither are untouched. For a leader isolation `left` is
    /// `Target::Leader` and `right` everyone else.
    Partition {
        /// The kind (halves, leader, bridge), for the record.
        kind: Kind,
        /// One side.
        left: Target,
        /// The other side; empty with `Target::Leader` means "all others".
        right: Vec<u64>,
    },
    /// Packets from `from` to `to` are dropped.
    OneWay {
        /// The sender whose packets are lost.
        from: u64,
        /// The receiver.
        to: u64,
    },
    /// Each node in `nodes` drops incoming packets from peers with
    /// probability `percent` / 100.
    Loss {
        /// The lossy receivers.
        nodes: Vec<u64>,
        /// The loss rate in percent.
        percent: u32,
    },
    /// `kill -9` (restart on heal).
    Kill(Target),
    /// `SIGSTOP` (`SIGCONT` on heal).
    Pause(Target),
    /// The node's wall clock moves by `seconds` (negative: back).
    Skew {
        /// The node.
        node: u64,
        /// The offset in seconds.
        seconds: i64,
    },
    /// The node's data directory fills up.
    Disk(u64),
}

impl Fault {
    /// Its kind.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Fault::Partition { kind, .. } => *kind,
            Fault::OneWay { .. } => Kind::OneWay,
            Fault::Loss { .. } => Kind::Loss,
            Fault::Kill(_) => Kind::Kill,
            Fault::Pause(_) => Kind::Pause,
            Fault::Skew { .. } => Kind::Skew,
            Fault::Disk(_) => Kind::Disk,
        }
    }
}

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Start a fault.
    Start(Fault),
    /// Heal the fault started by the previous step.
    Heal(Fault),
}

/// The whole schedule: steps with the time (from the start of the
/// workload) at which each is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// (due, step), in time order, starting with a `Start` and alternating.
    pub(crate) steps: Vec<(Duration, Step)>,
    /// How long a fault lasts.
    pub(crate) fault_duration: Duration,
    /// How long the cluster is healthy between faults.
    pub(crate) heal_duration: Duration,
}

/// A fault never lasts longer than this (nor the healthy time after it).
pub(crate) const PERIOD_MAX: Duration = Duration::from_secs(10);

/// Nor shorter than this: elections need a few seconds to be exercised.
pub(crate) const PERIOD_MIN: Duration = Duration::from_secs(2);

impl Schedule {
    /// The schedule for a run of `time_limit` over nodes `1..=nodes`.
    /// Fault and healthy periods are equal and sized so that each enabled
    /// kind gets at least one turn (within [`PERIOD_MIN`] and
    /// [`PERIOD_MAX`]); the last heal is due before `time_limit`.
    pub(crate) fn new(seed: u64, kinds: &[Kind], nodes: u64, time_limit: Duration) -> Schedule {
        assert!(nodes >= 1, "a cluster has nodes");
        let turns = kinds.len() as u32 + 1;
        let period = (time_limit / (2 * turns)).clamp(PERIOD_MIN, PERIOD_MAX);
        let mut schedule = Schedule {
            steps: Vec::new(),
            fault_duration: period,
            heal_duration: period,
        };
        if kinds.is_empty() {
            return schedule;
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut round: Vec<Kind> = Vec::new();
        // The first fault comes after one healthy period, so the workload
        // has started.
        let mut at = period;
        while at + period <= time_limit {
            if round.is_empty() {
                round = kinds.to_vec();
                rng.shuffle(&mut round);
            }
            let kind = round.pop().expect("refilled above");
            let fault = fault(&mut rng, kind, nodes);
            schedule.steps.push((at, Step::Start(fault.clone())));
            schedule.steps.push((at + period, Step::Heal(fault)));
            at += 2 * period;
        }
        schedule
    }
}

impl Schedule {
    /// The kinds of `kinds` that this schedule never starts: its time
    /// limit left them no turn.
    pub(crate) fn unscheduled(&self, kinds: &[Kind]) -> Vec<Kind> {
        kinds
            .iter()
            .copied()
            .filter(|kind| {
                !self
                    .steps
                    .iter()
                    .any(|(_, step)| matches!(step, Step::Start(f) if f.kind() == *kind))
            })
            .collect()
    }
}

/// The longest time limit [`time_limit_min`] looks at.
const TIME_LIMIT_SEARCH_MAX: Duration = Duration::from_secs(24 * 3600);

/// The shortest time limit, in whole seconds, whose schedule starts each
/// of `kinds` at least once (none if even a day is too short).
pub(crate) fn time_limit_min(kinds: &[Kind], nodes: u64) -> Option<Duration> {
    (0..=TIME_LIMIT_SEARCH_MAX.as_secs())
        .map(Duration::from_secs)
        .find(|&limit| {
            Schedule::new(0, kinds, nodes, limit)
                .unscheduled(kinds)
                .is_empty()
        })
}

/// A fault of `kind` with seeded parameters.
fn fault(rng: &mut fastrand::Rng, kind: Kind, nodes: u64) -> Fault {
    let mut ids: Vec<u64> = (1..=nodes).collect();
    rng.shuffle(&mut ids);
    let one = ids[0];
    let other = ids.get(1).copied().unwrap_or(one);
    match kind {
        Kind::PartitionHalves => partition(kind, &ids, (ids.len() / 2).max(1)),
        Kind::PartitionLeader => Fault::Partition {
            kind,
            left: Target::Leader { otherwise: one },
            right: Vec::new(),
        },
        // ids[0] is the bridge; the rest split in two sides that only the
        // bridge reaches.
        Kind::PartitionBridge => partition(kind, &ids[1..], (ids.len() - 1) / 2),
        Kind::OneWay => Fault::OneWay {
            from: one,
            to: other,
        },
        Kind::Loss => {
            let count = rng.usize(1..=ids.len());
            Fault::Loss {
                nodes: sorted(&ids[..count]),
                percent: rng.u32(10..=40),
            }
        }
        Kind::Kill => Fault::Kill(leader_or(rng, one)),
        Kind::Pause => Fault::Pause(leader_or(rng, one)),
        Kind::Skew => {
            let magnitude = rng.i64(30..=600);
            let seconds = if rng.bool() { magnitude } else { -magnitude };
            Fault::Skew { node: one, seconds }
        }
        Kind::Disk => Fault::Disk(one),
    }
}

/// A partition of `ids` into its first `half` and the rest.
fn partition(kind: Kind, ids: &[u64], half: usize) -> Fault {
    let (left, right) = ids.split_at(half);
    Fault::Partition {
        kind,
        left: Target::Nodes(sorted(left)),
        right: sorted(right),
    }
}

/// The leader or node `one`, by a coin toss.
fn leader_or(rng: &mut fastrand::Rng, one: u64) -> Target {
    if rng.bool() {
        Target::Leader { otherwise: one }
    } else {
        Target::Nodes(vec![one])
    }
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let first = Schedule::new(7, &Kind::ALL, 5, MINUTE);
        assert_eq!(first, Schedule::new(7, &Kind::ALL, 5, MINUTE));
        assert_ne!(first, Schedule::new(8, &Kind::ALL, 5, MINUTE));
    }

    #[test]
    fn steps_alternate_start_and_heal_of_the_same_fault_in_time_order() {
        for seed in 0..50 {
            let schedule = Schedule::new(seed, &Kind::ALL, 5, 10 * MINUTE);
            assert!(!schedule.steps.is_empty());
            assert_eq!(schedule.steps.len() % 2, 0);
            for pair in schedule.steps.chunks(2) {
                let (start_at, Step::Start(started)) = &pair[0] else {
                    panic!("seed {seed}: a pair must begin with a start: {pair:?}")
                };
                let (heal_at, Step::Heal(healed)) = &pair[1] else {
                    panic!("seed {seed}: a start must be followed by its heal: {pair:?}")
                };
                assert_eq!(started, healed);
                assert_eq!(*heal_at - *start_at, schedule.fault_duration);
            }
            for window in schedule.steps.windows(2) {
                assert!(window[0].0 < window[1].0, "seed {seed}: time order");
            }
            let last = schedule.steps.last().unwrap().0;
            assert!(last <= 10 * MINUTE, "seed {seed}: the last heal is in time");
        }
    }

    #[test]
    fn every_kind_appears_in_a_one_minute_run_of_five_nodes() {
        for seed in 0..50 {
            let schedule = Schedule::new(seed, &Kind::ALL, 5, MINUTE);
            for kind in Kind::ALL {
                let found = schedule
                    .steps
                    .iter()
                    .any(|(_, step)| matches!(step, Step::Start(f) if f.kind() == kind));
                assert!(found, "seed {seed}: {kind} missing from {schedule:?}");
            }
        }
    }

    #[test]
    fn the_shortest_time_limit_schedules_every_kind_and_one_second_less_does_not() {
        let minimum = time_limit_min(&Kind::ALL, 5).unwrap();
        for seed in 0..20 {
            let fits = Schedule::new(seed, &Kind::ALL, 5, minimum);
            assert!(fits.unscheduled(&Kind::ALL).is_empty(), "seed {seed}");
            let short = Schedule::new(seed, &Kind::ALL, 5, minimum - Duration::from_secs(1));
            assert!(!short.unscheduled(&Kind::ALL).is_empty(), "seed {seed}");
        }
        assert!(minimum <= MINUTE, "{minimum:?}");
        assert_eq!(time_limit_min(&[], 5), Some(Duration::ZERO));
    }

    #[test]
    fn only_enabled_kinds_appear_and_none_gives_an_empty_schedule() {
        let kinds = Kind::parse_list("kill,partition").unwrap();
        assert_eq!(kinds.len(), 4);
        let schedule = Schedule::new(3, &kinds, 3, 10 * MINUTE);
        for (_, step) in &schedule.steps {
            let (Step::Start(fault) | Step::Heal(fault)) = step;
            assert!(kinds.contains(&fault.kind()), "{fault:?}");
        }
        assert!(Schedule::new(3, &[], 3, MINUTE).steps.is_empty());
        assert!(Kind::parse_list("flood").unwrap_err().contains("flood"));
    }

    #[test]
    fn fault_parameters_name_existing_nodes_and_sides_do_not_overlap() {
        for seed in 0..200 {
            let schedule = Schedule::new(seed, &Kind::ALL, 5, 10 * MINUTE);
            for (_, step) in &schedule.steps {
                let Step::Start(fault) = step else { continue };
                let valid = |id: &u64| (1..=5).contains(id);
                match fault {
                    Fault::Partition { left, right, .. } => {
                        assert!(right.iter().all(valid));
                        match left {
                            Target::Nodes(left) => {
                                assert!(left.iter().all(valid));
                                assert!(left.iter().all(|id| !right.contains(id)));
                                assert!(!left.is_empty() && !right.is_empty(), "{fault:?}");
                            }
                            Target::Leader { otherwise } => assert!(valid(otherwise)),
                        }
                    }
                    Fault::OneWay { from, to } => assert!(valid(from) && valid(to) && from != to),
                    Fault::Loss { nodes, percent } => {
                        assert!(!nodes.is_empty() && nodes.iter().all(valid));
                        assert!((10..=40).contains(percent));
                    }
                    Fault::Kill(target) | Fault::Pause(target) => match target {
                        Target::Nodes(ids) => assert!(!ids.is_empty() && ids.iter().all(valid)),
                        Target::Leader { otherwise } => assert!(valid(otherwise)),
                    },
                    Fault::Skew { node, seconds } => {
                        assert!(valid(node) && (30..=600).contains(&seconds.abs()));
                    }
                    Fault::Disk(node) => assert!(valid(node)),
                }
            }
        }
    }
}
