//! The Jepsen-style runner: real `sluice node` processes, a seeded nemesis,
//! a recorded client workload, and the checker of this crate's library.
//! `jepsen/README.md` gives the shape; each module's doc gives its part:
//!
//! - [`supervisor`]: leftovers, network and tmpfs set-up, the worker
//!   process, teardown on every exit path;
//! - [`preflight`]: what the chosen mode and nemeses need from the
//!   machine, checked before the run starts;
//! - [`netns`]: namespace names, addresses, set-up commands, leftovers;
//! - [`worker`]: one run's phases, from the nodes' start to the verdict;
//! - [`nodes`]: the node processes;
//! - [`schedule`]: the seeded nemesis schedule (pure);
//! - [`nemesis`]: carrying the schedule out;
//! - [`proxy`]: the fault-injecting TCP proxy of the loopback mode;
//! - [`workload`]: producers, consumer groups, transactions;
//! - [`recorder`]: the history being written;
//! - [`config`]: what the supervisor tells the worker.

pub(crate) mod config;
pub(crate) mod nemesis;
pub(crate) mod netns;
pub(crate) mod nodes;
pub(crate) mod preflight;
pub(crate) mod proxy;
pub(crate) mod recorder;
pub(crate) mod schedule;
pub(crate) mod supervisor;
pub(crate) mod worker;
pub(crate) mod workload;
