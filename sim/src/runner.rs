//! Running scenarios over seeds: one fresh madsim runtime per seed, on its
//! own thread, optionally with a planted bug; the seed range from the
//! environment; the replay command of a failing seed.
//!
//! Seeds: `MADSIM_TEST_SEED` is the first seed (default 1, so the default
//! seed set is fixed and a test's verdict is reproducible) and
//! `MADSIM_TEST_NUM` the number of seeds per scenario (default: the
//! test's own count), as madsim's own tests read them.

use std::time::{Duration, Instant};

use sluice_model::testing::planted::{self, Bug};

use crate::scenario::{self, Outcome, Scenario};

/// Simulated time after which madsim stops a run: far beyond any
/// scenario, so only a livelock reaches it.
const SIMULATED_TIME_MAX: Duration = Duration::from_secs(600);

/// A range of seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeds {
    /// The first seed.
    pub first: u64,
    /// How many.
    pub count: u64,
}

impl Seeds {
    /// `MADSIM_TEST_SEED` (default 1) and `MADSIM_TEST_NUM` (default
    /// `count_default`).
    pub fn from_env(count_default: u64) -> Seeds {
        let read = |name: &str| {
            std::env::var(name).ok().map(|value| {
                value
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}={value} is not a number"))
            })
        };
        Seeds {
            first: read("MADSIM_TEST_SEED").unwrap_or(1),
            count: read("MADSIM_TEST_NUM").unwrap_or(count_default),
        }
    }

    /// The seeds, in order.
    pub fn iter(self) -> impl Iterator<Item = u64> {
        self.first..self.first + self.count
    }
}

/// How one seed ended.
#[derive(Debug)]
pub enum Verdict {
    /// The run finished and the checker found the history valid.
    Valid(Outcome),
    /// The run finished and the checker found anomalies.
    Anomalies(Outcome),
    /// The run panicked: a liveness step or an assertion failed.
    Panicked(String),
}

impl Verdict {
    /// Whether this is a pass.
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid(_))
    }
}

/// Runs `scenario` with `seed` on a fresh runtime and thread, with `bug`
/// planted on that thread.
pub fn run_seed(scenario: Scenario, seed: u64, bug: Option<Bug>) -> Verdict {
    let joined = std::thread::Builder::new()
        .name(format!("{scenario}-{seed}"))
        .spawn(move || {
            planted::plant(bug);
            let mut runtime =
                madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            runtime.set_time_limit(SIMULATED_TIME_MAX);
            runtime.block_on(scenario::run(scenario))
        })
        .expect("spawn a simulation thread")
        .join();
    match joined {
        Ok(outcome) if outcome.rejected > 0 && outcome.report.valid => Verdict::Panicked(format!(
            "the history is valid but the cluster rejected {} events of a correct workload",
            outcome.rejected
        )),
        Ok(outcome) if outcome.report.valid => Verdict::Valid(outcome),
        Ok(outcome) => Verdict::Anomalies(outcome),
        Err(payload) => Verdict::Panicked(panic_message(&payload)),
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// The command that replays `seed` of `scenario`.
pub fn replay_command(scenario: Scenario, seed: u64, bug: Option<Bug>) -> String {
    let bug = bug.map_or(String::new(), |bug| format!(" --bug {bug}"));
    format!("cargo vopr -- --scenario {scenario} --seed {seed}{bug}")
}

/// What a pass over seeds measured.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Seeds run.
    pub seeds: u64,
    /// Wall time taken.
    pub elapsed: Duration,
    /// Simulated time, summed.
    pub simulated: Duration,
}

impl Throughput {
    /// Seeds per second of wall time.
    pub fn seeds_per_second(&self) -> f64 {
        self.seeds as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Runs `scenario` over `seeds` without a planted bug and panics at the
/// first seed that fails, naming it and the command that replays it.
pub fn check_seeds(scenario: Scenario, seeds: Seeds) -> Throughput {
    let started = Instant::now();
    let mut simulated = Duration::ZERO;
    let (mut batches, mut transactions, mut txns_failed) = (0, 0, 0);
    for seed in seeds.iter() {
        match run_seed(scenario, seed, None) {
            Verdict::Valid(outcome) => {
                simulated += outcome.simulated;
                batches += outcome.batches;
                transactions += outcome.transactions;
                txns_failed += outcome.report.stats.txns.fail;
            }
            Verdict::Anomalies(outcome) => panic!(
                "scenario {scenario}, seed {seed}: the checker found anomalies:\n{}\n\
                 replay: {}\n\
                 or: MADSIM_TEST_SEED={seed} MADSIM_TEST_NUM=1 cargo simtest --test scenarios -- --exact {}",
                outcome.report,
                replay_command(scenario, seed, None),
                scenario.name().replace('-', "_")
            ),
            Verdict::Panicked(message) => panic!(
                "scenario {scenario}, seed {seed} failed: {message}\n\
                 replay: {}\n\
                 or: MADSIM_TEST_SEED={seed} MADSIM_TEST_NUM=1 cargo simtest --test scenarios -- --exact {}",
                replay_command(scenario, seed, None),
                scenario.name().replace('-', "_")
            ),
        }
    }
    let throughput = Throughput {
        seeds: seeds.count,
        elapsed: started.elapsed(),
        simulated,
    };
    eprintln!(
        "scenario {scenario}: seeds {}..{} passed, {:.2} seeds/s ({:.1} s wall, {:.0} s simulated); \
         {batches} batches, {transactions} transactions ok, {txns_failed} refused",
        seeds.first,
        seeds.first + seeds.count,
        throughput.seeds_per_second(),
        throughput.elapsed.as_secs_f64(),
        throughput.simulated.as_secs_f64()
    );
    throughput
}
