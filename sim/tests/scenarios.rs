//! Every scenario over its default seed set (see `sluice_sim::scenario`
//! for what each does and `sluice_sim::runner` for the seed range).
//!
//! `MADSIM_TEST_SEED` moves the range, `MADSIM_TEST_NUM` sets the number
//! of seeds per scenario; a failing seed prints the command that replays
//! it alone.
#![cfg(madsim)]

use sluice_sim::runner::{Seeds, check_seeds};
use sluice_sim::scenario::Scenario;

fn check(scenario: Scenario, count_default: u64) {
    check_seeds(scenario, Seeds::from_env(count_default));
}

#[test]
fn partition() {
    check(Scenario::Partition, 80);
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
    check(Scenario::SplitBrain, 80);
}

#[test]
fn crash() {
    check(Scenario::Crash, 80);
}

#[test]
fn dc_failover() {
    check(Scenario::DcFailover, 50);
}

#[test]
fn clock() {
    check(Scenario::Clock, 50);
}
