//! openraft's own storage conformance suite, on the real disk and on the
//! crash-faithful simulated disk.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use sluice_core::io::CrashEnv;
use sluice_core::io::os::{OsClock, OsDisk, OsEnv};
use sluice_core::io::{CrashDisk, Env, ManualClock};
use sluice_core::log::Options;
use sluice_core::raft::{Durability, LogStore, StateMachineStore, TypeConfig};

type C = TypeConfig<OsEnv>;
type Crash = TypeConfig<CrashEnv>;

struct OsBuilder;

impl StoreBuilder<C, LogStore<OsEnv>, StateMachineStore<OsEnv>, tempfile::TempDir> for OsBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<OsEnv>, StateMachineStore<OsEnv>), StorageError<C>>
    {
        let dir = tempfile::tempdir().expect("temporary directory");
        let disk = OsDisk::open(dir.path()).expect("data directory");
        let (store, machine) = build(disk, Arc::new(OsClock::new()));
        Ok((dir, store, machine))
    }
}

struct CrashBuilder;

impl StoreBuilder<Crash, LogStore<CrashEnv>, StateMachineStore<CrashEnv>> for CrashBuilder {
    async fn build(
        &self,
    ) -> Result<((), LogStore<CrashEnv>, StateMachineStore<CrashEnv>), StorageError<Crash>> {
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH));
        let (store, machine) = build(CrashDisk::new(7), clock);
        Ok(((), store, machine))
    }
}

fn build<E: Env>(
    disk: E::Disk,
    clock: Arc<dyn sluice_core::io::Clock>,
) -> (LogStore<E>, StateMachineStore<E>) {
    let options = Options {
        segment_size: 4096,
        ..Options::default()
    };
    let store =
        LogStore::open(disk.clone(), clock, options, Durability::Sync).expect("open log store");
    (store, StateMachineStore::new(disk))
}

#[test]
fn openraft_suite_on_os_disk() {
    C::run(Suite::test_all(OsBuilder)).expect("suite passes");
}

#[test]
fn openraft_suite_on_crash_disk() {
    Crash::run(Suite::test_all(CrashBuilder)).expect("suite passes");
}
