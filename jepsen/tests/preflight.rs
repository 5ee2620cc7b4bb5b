//! The runner refuses to start a run whose faults could not happen: run
//! as a user would, with a `PATH` that lacks iptables (or a libfaketime
//! path that does not exist), it must exit non-zero naming what is
//! missing and how to install it, before it creates anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory holding links to the programs a namespace run needs, minus
/// iptables: what `PATH` is in these tests.
fn path_without_iptables(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["ip", "mount", "umount"] {
        if let Some(found) = std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
        {
            std::os::unix::fs::symlink(found, bin.join(name)).unwrap();
        }
    }
    assert!(!bin.join("iptables").exists());
    bin
}

fn runner(path: &Path, run_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-jepsen"))
        .args(["--nodes", "3", "--time-limit", "60", "--seed", "1"])
        .arg("--run-dir")
        .arg(run_dir)
        // Never built or run: the refusal comes first.
        .args(["--sluice", "/nonexistent/sluice"])
        .args(args)
        .env("PATH", path)
        .output()
        .expect("the runner starts")
}

#[test]
fn partitions_without_iptables_on_path_refuse_to_start_naming_iptables() {
    let dir = tempfile::tempdir().unwrap();
    let bin = path_without_iptables(dir.path());
    let run_dir = dir.path().join("run");
    let output = runner(&bin, &run_dir, &["--nemesis", "partition"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("iptables (not on PATH)"), "{stderr}");
    assert!(stderr.contains("partition-halves"), "{stderr}");
    assert!(stderr.contains("apt-get install iptables"), "{stderr}");
    assert!(!run_dir.exists(), "nothing is created before the check");

    // The same PATH with iptables on it gets past the check (and stops at
    // the missing sluice binary, or at root, later).
    let iptables = dir.path().join("bin").join("iptables");
    std::fs::copy("/bin/true", &iptables).unwrap();
    let output = runner(&bin, &run_dir, &["--nemesis", "partition"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("iptables (not on PATH)"), "{stderr}");
}

#[test]
fn skew_without_libfaketime_refuses_to_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin = path_without_iptables(dir.path());
    let run_dir = dir.path().join("run");
    let missing = dir.path().join("libfaketimeMT.so.1");
    let output = runner(
        &bin,
        &run_dir,
        &[
            "--no-netns",
            "--nemesis",
            "skew,kill",
            "--libfaketime",
            missing.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("libfaketime"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(stderr.contains("apt-get install faketime"), "{stderr}");
    // Loopback partitions go through the proxy: iptables is not asked for.
    assert!(!stderr.contains("iptables"), "{stderr}");
    assert!(!run_dir.exists());
}

#[test]
fn a_time_limit_too_short_for_every_kind_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-jepsen"))
        .args(["--nodes", "3", "--time-limit", "10", "--no-netns"])
        .args(["--nemesis", "kill,pause,loss"])
        .arg("--run-dir")
        .arg(&run_dir)
        .args(["--sluice", "/nonexistent/sluice"])
        .env("PATH", path)
        .output()
        .expect("the runner starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--time-limit 10 leaves no turn"),
        "{stderr}"
    );
    assert!(stderr.contains("use --time-limit at least"), "{stderr}");
    assert!(!run_dir.exists());
}

#[test]
fn loopback_mode_refuses_network_faults_it_could_not_aim() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let output = runner(
        Path::new(&path),
        &run_dir,
        &["--no-netns", "--nemesis", "kill,partition-halves"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--no-netns cannot inject partition-halves"),
        "{stderr}"
    );
    assert!(!run_dir.exists());
}
