//! One writer per data directory: `OsDisk::open` takes the directory's
//! lock, so a second node or embedded bus on it is refused with a named
//! error; a read-only open takes no lock and changes nothing.

use std::io::ErrorKind;
use std::time::Duration;

use sluice_core::bus::{Bus, Message};
use sluice_core::io::os::{DirectoryInUse, LOCK_NAME, OsDisk};
use sluice_core::io::{Disk, DiskFile};

fn in_use_message(dir: &std::path::Path) -> String {
    format!(
        "data directory {} is in use by another process (lock file {})",
        dir.display(),
        dir.join(LOCK_NAME).display()
    )
}

#[test]
fn a_second_open_is_refused_until_every_clone_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let first = OsDisk::open(dir.path()).unwrap();
    assert!(OsDisk::in_use(dir.path()).unwrap());

    let refused = OsDisk::open(dir.path()).expect_err("a second writer");
    assert!(DirectoryInUse::is(&refused), "{refused:?}");
    assert_eq!(refused.kind(), ErrorKind::ResourceBusy);
    assert_eq!(refused.to_string(), in_use_message(dir.path()));

    // A clone shares the lock: dropping the original keeps it.
    let clone = first.clone();
    drop(first);
    assert!(OsDisk::open(dir.path()).is_err());
    drop(clone);
    assert!(!OsDisk::in_use(dir.path()).unwrap());
    let again = OsDisk::open(dir.path()).expect("free once every clone is gone");

    // Released, the directory is free at once and the old disk changes
    // nothing more.
    let old = again.clone();
    again.release();
    let next = OsDisk::open(dir.path()).expect("free once released");
    assert!(old.create("late").is_err());
    assert!(
        next.list().unwrap().is_empty(),
        "the lock file is not listed"
    );
    assert!(
        next.create(LOCK_NAME).is_err(),
        "the lock file is not the log's"
    );
}

#[test]
fn a_read_only_disk_takes_no_lock_and_refuses_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let writer = OsDisk::open(dir.path()).unwrap();
    let file = writer.create("a").unwrap();
    file.write_at(0, b"hello").unwrap();
    file.sync_data().unwrap();

    let reader = OsDisk::open_read_only(dir.path()).expect("beside the writer");
    assert!(reader.is_read_only());
    assert_eq!(reader.list().unwrap(), vec!["a".to_owned()]);
    let read = reader.open("a").unwrap();
    let mut bytes = [0u8; 5];
    read.read_at(0, &mut bytes).unwrap();
    assert_eq!(&bytes, b"hello");
    assert_eq!(&read.map().unwrap()[..], b"hello");

    let denied = |result: std::io::Result<()>| {
        assert_eq!(result.unwrap_err().kind(), ErrorKind::PermissionDenied);
    };
    denied(reader.create("b").map(drop));
    denied(reader.remove("a"));
    denied(reader.rename("a", "b"));
    denied(reader.sync_dir());
    denied(read.write_at(0, b"x"));
    denied(read.set_len(1));
    denied(read.sync_data());
    // Refused without poisoning: reads go on.
    read.read_at(0, &mut bytes).unwrap();
    assert_eq!(writer.list().unwrap(), vec!["a".to_owned()]);

    assert!(OsDisk::open_read_only(dir.path().join("missing")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_bus_holds_its_directory_until_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).await.unwrap();
    bus.create_topic("t", 1, Default::default()).await.unwrap();
    let refused = Bus::open(dir.path()).await.expect_err("a second bus");
    assert!(
        refused.to_string().contains(&in_use_message(dir.path())),
        "{refused}"
    );
    // Closed, it can be opened again at once, time after time, although
    // a producer of the old bus still lives.
    let mut producer = bus.producer().await.unwrap();
    producer.publish(Message::new("t", "one")).await.unwrap();
    bus.close().await.unwrap();
    for round in 0..3 {
        let bus = tokio::time::timeout(Duration::from_secs(30), Bus::open(dir.path()))
            .await
            .expect("reopened in time")
            .unwrap_or_else(|e| panic!("reopen {round}: {e}"));
        assert_eq!(bus.describe_topic("t").unwrap().partitions, vec![(0, 1)]);
        bus.close().await.unwrap();
    }
    drop(producer);
}
