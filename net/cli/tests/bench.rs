//! `sluice bench` against a real node process: the report counts what
//! reached the log, its percentiles are ordered, the chart is drawn, and
//! bad arguments and an unreachable cluster fail by name.

mod common;

use common::{Node, free_address, sluice, sluice_ok, tail_payloads, text};

fn report(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).expect("one JSON report")
}

#[test]
fn a_run_reports_what_reached_the_log_and_draws_its_curve() {
    let node = Node::start_initialised();
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first.json");
    let chart = dir.path().join("latency.svg");
    let base = [
        "bench",
        "--cluster",
        &node.address,
        "--topic",
        "load",
        "--partitions",
        "4",
        "--producers",
        "2",
        "--size",
        "64",
        "--warmup",
        "0",
        "--duration",
        "1",
        "--json",
    ];
    let out = sluice_ok(&[&base[..], &["--consumers", "1"]].concat(), None);
    std::fs::write(&first, &out).expect("write the first report");
    let run = report(&out);
    let events = run["events"].as_u64().expect("events");
    assert!(events > 0, "{run}");
    assert_eq!(run["errors"], 0, "{run}");
    let latencies: Vec<u64> = run["latency_us"]
        .as_array()
        .expect("latencies")
        .iter()
        .map(|pair| pair[1].as_u64().expect("µs"))
        .collect();
    assert!(latencies.windows(2).all(|w| w[0] <= w[1]), "{latencies:?}");
    assert!(latencies[0] > 0, "{latencies:?}");
    // Every event counted was acknowledged, so it is in the log (the
    // count leaves out only what was sent after the window closed).
    let stored = tail_payloads(&node.address, "load").len() as u64;
    assert!(stored >= events, "{stored} stored, {events} reported");

    let paced = sluice_ok(
        &[
            &base[..],
            &[
                "--batch",
                "10",
                "--rate",
                "500",
                "--label",
                "paced",
                "--plot",
                chart.to_str().unwrap(),
                "--compare",
                first.to_str().unwrap(),
            ],
        ]
        .concat(),
        None,
    );
    let paced = report(&paced);
    let rate = paced["events_per_second"].as_f64().expect("rate");
    assert!((250.0..=600.0).contains(&rate), "paced at 500/s: {paced}");
    let svg = std::fs::read_to_string(&chart).expect("the chart");
    assert!(svg.starts_with("<svg"));
    assert!(
        svg.contains("paced") && svg.contains("sluice"),
        "both curves are labelled"
    );
}

#[test]
fn bad_arguments_and_an_unreachable_cluster_fail_by_name() {
    let nowhere = free_address();
    for (args, expected) in [
        (vec!["--producers", "0"], "--producers 0 is out of range"),
        (vec!["--rate", "0"], "--rate 0 sends nothing"),
        (vec!["--size", "2000000"], "--size 2000000 is larger"),
        (vec!["--duration", "0"], "--duration must be more than 0"),
    ] {
        let out = sluice(
            &[&["bench", "--cluster", &nowhere][..], &args[..]].concat(),
            None,
        );
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let out = sluice(
        &[
            "bench",
            "--cluster",
            &nowhere,
            "--timeout",
            "1",
            "--duration",
            "1",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no node of the cluster"),
        "{}",
        text(&out.stderr)
    );
}
