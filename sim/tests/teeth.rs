//! Teeth: every planted bug (`sluice_model::testing::planted`) must be caught by
//! the checker within the default seed set of the scenario made to expose
//! it. A checker that never fails proves nothing.
//!
//! Each test plants its bug, runs the scenario's default seeds in order
//! and stops at the first one whose history the checker rejects; it fails
//! if none does. A run that panics instead (a liveness step failed) does
//! not count as caught: the checker must see the bug.
#![cfg(madsim)]

use sluice_jepsen::AnomalyClass;
use sluice_model::testing::planted::Bug;
use sluice_sim::runner::{Seeds, Verdict, replay_command, run_seed};
use sluice_sim::scenario::Scenario;

/// Seeds tried per bug at most: the first seeds of the scenario's default
/// set (fixed: `MADSIM_TEST_SEED`/`MADSIM_TEST_NUM` do not move them).
const SEEDS: Seeds = Seeds {
    first: 1,
    count: 20,
};

fn caught(bug: Bug, scenario: Scenario) -> Vec<AnomalyClass> {
    let seeds = SEEDS;
    let mut panics = Vec::new();
    for seed in seeds.iter() {
        match run_seed(scenario, seed, Some(bug)) {
            Verdict::Anomalies(outcome) => {
                eprintln!(
                    "{bug} caught in scenario {scenario} at seed {seed}: {:?}\nreplay: {}",
                    outcome.report.failures(),
                    replay_command(scenario, seed, Some(bug))
                );
                return outcome.report.failures();
            }
            Verdict::Panicked(message) => panics.push((seed, message)),
            Verdict::Valid(_) => {}
        }
    }
    panic!(
        "planted bug {bug} was not caught by the checker in scenario {scenario}, seeds {:?}; \
         runs that panicked instead: {panics:?}",
        seeds.iter().collect::<Vec<_>>()
    );
}

#[test]
fn ack_before_commit_is_caught() {
    let classes = caught(Bug::AckBeforeCommit, Scenario::SplitBrain);
    assert!(!classes.is_empty());
}

#[test]
fn skip_producer_dedup_is_caught() {
    let classes = caught(Bug::SkipProducerDedup, Scenario::Partition);
    assert!(classes.contains(&AnomalyClass::Duplicated), "{classes:?}");
}

#[test]
fn accept_stale_generation_is_caught() {
    let classes = caught(Bug::AcceptStaleGeneration, Scenario::Partition);
    assert!(
        classes.contains(&AnomalyClass::ExactlyOnceViolation),
        "{classes:?}"
    );
}

#[test]
fn ack_before_sync_is_caught() {
    let classes = caught(Bug::AckBeforeSync, Scenario::Crash);
    assert!(!classes.is_empty());
}
