//! `sluice demo` as a user runs it: twice on the same directory, each run
//! reporting 0 lost and 0 duplicated, with the documented JSON keys.

use std::process::Command;

fn demo(dir: &std::path::Path, durability: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "demo",
            "--json",
            "--events",
            "3000",
            "--producers",
            "4",
            "--durability",
            durability,
        ])
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run sluice demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

#[test]
fn demo_twice_on_one_directory_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for durability in ["sync", "buffer"] {
        let report = demo(dir.path(), durability);
        for key in [
            "published",
            "consumed",
            "lost",
            "duplicates",
            "events_per_sec",
            "ack_p99_us",
            "fsync_p99_us",
        ] {
            assert!(report.get(key).is_some(), "missing {key} in {report}");
        }
        assert_eq!(report["published"], 3000, "{report}");
        assert_eq!(report["consumed"], 3000, "{report}");
        assert_eq!(report["lost"], 0, "{report}");
        assert_eq!(report["duplicates"], 0, "{report}");
    }
}
