//! Every scenario over its default seed set (see `sluice_sim::scenario`
//! for what each does and `sluice_sim::runner` for the seed range).
//!
//! `MADSIM_TEST_SEED` moves the range, `MADSIM_TEST_NUM` sets the number
//! of seeds per scenario; a failing seed prints the command that replays
//! it alone.
//!
//! The default counts (630 seeds in all) are sized so the whole pass takes
//! about a minute on this 2-core machine when it is quiet and stays under
//! five minutes when other builds load it (every scenario gets at least
//! 50; `MADSIM_TEST_NUM=300` ran all eight clean in 5.5 minutes).
#![cfg(madsim)]

use sluice_sim::runner::{Seeds, check_seeds};
use sluice_sim::scenario::Scenario;

fn check(scenario: Scenario, count_default: u64) {
    check_seeds(scenario, Seeds::from_env(count_default));
}

#[test]
fn partition() {
    check(Scenario::Partition, 70);
}

#[test]
fn one_way() {
    check(Scenario::OneWay, 60);
}

#[test]
fn flapping() {
    check(Scenario::Flapping, 60);
}

#[test]
fn lossy() {
    check(Scenario::Lossy, 60);
}

#[test]
fn split_brain() {
    check(Scenario::SplitBrain, 70);
}

#[test]
fn crash() {
    check(Scenario::Crash, 100);
}

#[test]
fn dc_failover() {
    check(Scenario::DcFailover, 60);
}

#[test]
fn clock() {
    check(Scenario::Clock, 50);
}

#[test]
fn snapshot() {
    check(Scenario::Snapshot, 40);
}

#[test]
fn disk() {
    check(Scenario::Disk, 60);
}
