//! The hook that makes a plain `cargo test` run the simulations.
//!
//! The simulations need the whole dependency graph built with
//! `--cfg madsim`, which a normal test build cannot provide, so this test
//! (compiled only without that cfg) runs
//! `cargo test -p sluice-sim --target-dir target/madsim` (at opt-level 1)
//! with `CARGO_ENCODED_RUSTFLAGS=--cfg madsim` and fails if that fails. Under
//! the cfg this file is empty, so the child does not recurse.
//!
//! The child gets its own target directory (the madsim build is a second
//! full build of the engine) and none of the parent's rustflags or target
//! directory. Seeds pass through: `MADSIM_TEST_SEED`, `MADSIM_TEST_NUM`.
//! `cargo simtest` runs the same without this wrapper.
#![cfg(not(madsim))]

use std::path::Path;
use std::process::Command;

#[test]
fn simulations_pass_under_madsim() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("sim/ lives in the workspace root");
    let target_dir = workspace.join("target").join("madsim");
    let started = std::time::Instant::now();
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args(["test", "-p", "sluice-sim", "--target-dir"])
        .arg(&target_dir)
        // As `cargo simtest` does: optimised runs are about 20 times
        // faster, and the same flags share one build with the alias.
        .args(["--config", "profile.dev.opt-level=1"])
        .env("CARGO_ENCODED_RUSTFLAGS", "--cfg\x1fmadsim")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run cargo for the madsim build");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    println!(
        "madsim build and simulations took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "the simulations failed ({}); the output above names the failing seed. \
         Replay one with `MADSIM_TEST_SEED=<seed> cargo simtest`.",
        output.status
    );
}
