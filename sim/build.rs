//! Declares the `madsim` cfg, so that `#[cfg(madsim)]` is a known
//! condition in both builds (normal and `--cfg madsim`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(madsim)");
}
