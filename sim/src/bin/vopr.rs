//! `vopr`: runs simulation seeds until one fails, then prints the command
//! that replays it (after TigerBeetle's VOPR).
//!
//! ```text
//! cargo vopr                                   # every scenario in turn, seeds from the clock, forever
//! cargo vopr -- --scenario crash --from 1 --count 500
//! cargo vopr -- --scenario crash --seed 42     # replay one seed and print its report
//! cargo vopr -- --bug ack-before-sync --scenario crash   # hunt a planted bug
//! cargo vopr -- --scenario crash --seed 42 --history h.jsonl   # and keep its history
//! ```
//!
//! Only the madsim build has a simulator (`cargo vopr` is an alias that
//! builds with `--cfg madsim` into `target/madsim`); a normal build of this
//! binary refuses to run.

#[cfg(not(madsim))]
fn main() {
    eprintln!("vopr needs the madsim build: run it as `cargo vopr` (see .cargo/config.toml)");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    vopr::main();
}

#[cfg(madsim)]
mod vopr {
    use std::time::{Instant, SystemTime};

    use sluice_model::testing::planted::Bug;
    use sluice_sim::runner::{Verdict, replay_command, run_seed};
    use sluice_sim::scenario::Scenario;

    struct Args {
        scenarios: Vec<Scenario>,
        from: u64,
        count: Option<u64>,
        bug: Option<Bug>,
        replay: bool,
        history: Option<String>,
    }

    fn usage() -> ! {
        let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        let bugs: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
        eprintln!(
            "usage: vopr [--scenario NAME] [--seed N | --from N [--count N]] [--bug NAME] \
             [--history FILE]\n\
             scenarios: {}\nbugs: {}",
            names.join(", "),
            bugs.join(", ")
        );
        std::process::exit(2);
    }

    fn parse() -> Args {
        let mut args = Args {
            scenarios: Scenario::ALL.to_vec(),
            from: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |since| since.as_secs()),
            count: None,
            bug: None,
            replay: false,
            history: None,
        };
        let mut words = std::env::args().skip(1);
        while let Some(word) = words.next() {
            let mut value = || words.next().unwrap_or_else(|| usage());
            let number = |text: String| text.parse::<u64>().unwrap_or_else(|_| usage());
            match word.as_str() {
                "--scenario" => {
                    let name = value();
                    args.scenarios = vec![Scenario::from_name(&name).unwrap_or_else(|| usage())];
                }
                "--seed" => {
                    args.from = number(value());
                    args.count = Some(1);
                    args.replay = true;
                }
                "--from" => args.from = number(value()),
                "--count" => args.count = Some(number(value())),
                "--history" => args.history = Some(value()),
                "--bug" => args.bug = Some(Bug::from_name(&value()).unwrap_or_else(|| usage())),
                _ => usage(),
            }
        }
        args
    }

    pub(crate) fn main() {
        let args = parse();
        let started = Instant::now();
        let mut runs: u64 = 0;
        let mut seed = args.from;
        loop {
            if args.count.is_some_and(|count| seed >= args.from + count) {
                break;
            }
            for &scenario in &args.scenarios {
                let verdict = run_seed(scenario, seed, args.bug);
                runs += 1;
                if let (Some(path), Verdict::Valid(outcome) | Verdict::Anomalies(outcome)) =
                    (&args.history, &verdict)
                {
                    std::fs::write(path, &outcome.history).expect("write the history");
                }
                match verdict {
                    Verdict::Valid(outcome) if args.replay => {
                        println!("{scenario} seed {seed}: valid\n{}", outcome.report);
                    }
                    Verdict::Valid(_) => {}
                    Verdict::Anomalies(outcome) => {
                        println!(
                            "{scenario} seed {seed}: the checker found anomalies\n{}",
                            outcome.report
                        );
                        fail(scenario, seed, args.bug);
                    }
                    Verdict::Panicked(message) => {
                        println!("{scenario} seed {seed}: {message}");
                        fail(scenario, seed, args.bug);
                    }
                }
                if runs % 50 == 0 {
                    let rate = runs as f64 / started.elapsed().as_secs_f64();
                    eprintln!("{runs} runs, last seed {seed}, {rate:.2} runs/s, no failure");
                }
            }
            seed += 1;
        }
        let rate = runs as f64 / started.elapsed().as_secs_f64().max(f64::EPSILON);
        eprintln!("{runs} runs passed ({rate:.2} runs/s)");
    }

    fn fail(scenario: Scenario, seed: u64, bug: Option<Bug>) -> ! {
        println!("replay: {}", replay_command(scenario, seed, bug));
        std::process::exit(1);
    }
}
