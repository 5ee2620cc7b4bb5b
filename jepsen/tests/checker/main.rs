//! The checker's own tests. A clean background workload (retries,
//! indeterminate ops, rebalances, transactions) must pass; each other test
//! plants one anomaly on top of it and asserts that exactly that class is
//! reported (see `common::assert_planted`).

mod clean;
mod common;
mod consumers;
mod exactly_once;
mod format;
mod log;
mod order;
