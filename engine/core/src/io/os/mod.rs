//! The production implementations of the seams: the only module of the
//! engine that calls `std::fs`, reads the system clocks or maps memory.

#![allow(clippy::disallowed_methods)]

mod clock;
mod disk;
mod runtime;

pub use clock::OsClock;
pub use disk::{DirectoryInUse, LOCK_NAME, OsDisk, OsFile};
pub use runtime::OsRuntime;

/// The production environment: tokio, real files, the system clock.
#[derive(Debug)]
pub struct OsEnv;

impl super::Env for OsEnv {
    type Runtime = OsRuntime;
    type Disk = OsDisk;
    type Clock = OsClock;
}
