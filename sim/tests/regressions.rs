//! Seeds that once failed, each a named test. Each names what it found;
//! the fix is described where it was made.
#![cfg(madsim)]

use sluice_sim::runner::{Verdict, replay_command, run_seed};
use sluice_sim::scenario::Scenario;

fn passes(scenario: Scenario, seed: u64) {
    match run_seed(scenario, seed, None) {
        Verdict::Valid(_) => {}
        Verdict::Anomalies(outcome) => panic!(
            "{scenario} seed {seed}: the checker found anomalies:\n{}\nreplay: {}",
            outcome.report,
            replay_command(scenario, seed, None)
        ),
        Verdict::Panicked(message) => panic!(
            "{scenario} seed {seed} failed: {message}\nreplay: {}",
            replay_command(scenario, seed, None)
        ),
    }
}

/// A killed leader came back as leader in its old term without an
/// election (openraft's leader restore, on by default) with a state
/// machine rebuilt only up to an old index, and answered a read-index
/// read from it: a worker started from a stale committed offset and
/// processed inputs twice (exactly-once violation). Fixed by
/// `enable_leader_restore: Some(false)` in `sluice_sim::raft_config_with`.
#[test]
fn crash_seed_45_restored_leader_served_a_stale_read() {
    passes(Scenario::Crash, 45);
}

/// With a 50 ms heartbeat over 10-40 ms WAN links, no heartbeat was ever
/// acknowledged in time; once the clients stopped, the leader's lease
/// lapsed and every write was refused with `LeaseExpired` for good
/// (liveness). Fixed by scaling heartbeats to the round trip.
#[test]
fn dc_failover_seed_14_heartbeat_below_the_wan_round_trip() {
    passes(Scenario::DcFailover, 14);
}

/// Workers read committed offsets from whichever node they talked to; a
/// lagging node's stale commit made a new incarnation process inputs
/// again (exactly-once violation). Fixed in the workload by a read-index
/// barrier before reading (`SimCluster::read_barrier`).
#[test]
fn partition_seed_12_stale_committed_offset() {
    passes(Scenario::Partition, 12);
}
