//! The offline verifier against a real bus's data directory: intact, then
//! tampered in each way an auditor cares about; each test asserts the
//! verifier names the right file, byte offset and record index.

// Tests tamper with files through std::fs; the engine's own code may not.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

use sluice_audit::VerifySignature as _;
use sluice_audit::{
    Checkpoint, Finding, FindingReason, KeyPair, Report, VerifyError, VerifyOptions, keys, verify,
};
use sluice_core::bus::{Bus, BusConfig, Message};
use sluice_core::io::os::{OsClock, OsDisk};
use sluice_core::log::frame::{self, FrameError};
use sluice_core::log::{Entry, Log, Options, PersistMode, SPARE_NAME};
use sluice_model::constants::FRAME_HEADER_SIZE;
use sluice_model::state::TopicConfig;

const DISTID: &str = "node-1@sluice.test";

/// A frame found by walking the segment files.
#[derive(Debug, Clone)]
struct Located {
    file: PathBuf,
    offset: usize,
    header: frame::Header,
}

impl Located {
    fn name(&self) -> String {
        self.file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key: KeyPair,
    checkpoint: Checkpoint,
    checkpoint_index: u64,
}

/// A bus that published 400 events in 40 batches over several segments,
/// then signed one checkpoint (the last entry). The node's key pair lies
/// in the directory as `node.key.pem` / `node.pub.pem`.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let key = KeyPair::generate(DISTID).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (checkpoint, checkpoint_index) = runtime.block_on(async {
        let config = BusConfig {
            segment_size: 16 * 1024,
            retention_interval: None,
            ..BusConfig::default()
        };
        let bus = Bus::open_with_config(&path, config).await.unwrap();
        bus.create_topic("audit", 2, TopicConfig::default())
            .await
            .unwrap();
        let mut producer = bus.producer().await.unwrap();
        for batch in 0..40 {
            let mut pending = Vec::new();
            for i in 0..10 {
                let body = format!("{{\"subject\":\"s{}\",\"n\":{batch}{i}}}", i % 3);
                pending.push(producer.send(Message::new("audit", body)).await.unwrap());
            }
            for receipt in pending {
                receipt.wait().await.unwrap();
            }
        }
        let raft = bus.raft();
        raft.trigger().snapshot().await.unwrap();
        raft.wait(Some(std::time::Duration::from_secs(10)))
            .metrics(|m| m.snapshot.is_some(), "a snapshot exists")
            .await
            .unwrap();
        let signed = bus.checkpoint(&key).await.unwrap();
        bus.close().await.unwrap();
        signed
    });
    std::fs::write(path.join("node.key.pem"), key.secret_pem()).unwrap();
    std::fs::write(path.join("node.pub.pem"), key.public_pem()).unwrap();
    Fixture {
        _dir: dir,
        path,
        key,
        checkpoint,
        checkpoint_index,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn frames(dir: &Path) -> Vec<Located> {
    let mut out = Vec::new();
    for file in segments(dir) {
        let bytes = std::fs::read(&file).unwrap();
        let mut offset = 0;
        while offset < bytes.len() {
            // The active segment may end in the zeros of a spare.
            if bytes[offset..].iter().all(|&b| b == 0) {
                break;
            }
            let header = frame::decode(&bytes[offset..]).unwrap();
            out.push(Located {
                file: file.clone(),
                offset,
                header,
            });
            offset += header.size as usize;
        }
    }
    out
}

fn frame_at(dir: &Path, index: u64) -> Located {
    frames(dir)
        .into_iter()
        .find(|f| f.header.index == index)
        .unwrap()
}

/// A frame in the middle of a segment that holds a batch.
fn middle_batch(dir: &Path) -> Located {
    let all = frames(dir);
    // Past the first segment, the one holding the most frames: how the
    // batcher grouped the sends (and so which segment holds what) depends
    // on timing.
    let count = |seg: &PathBuf| all.iter().filter(|f| &f.file == seg).count();
    let seg = segments(dir)
        .into_iter()
        .skip(1)
        .max_by_key(count)
        .expect("the fixture has several segments");
    let in_seg: Vec<&Located> = all.iter().filter(|f| f.file == seg).collect();
    assert!(
        in_seg.len() >= 3,
        "the fixture spreads frames over segments"
    );
    in_seg[in_seg.len() / 2].clone()
}

fn edit(file: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(file).unwrap();
    f(&mut bytes);
    std::fs::write(file, bytes).unwrap();
}

fn fix_crc(bytes: &mut [u8], offset: usize) {
    let size = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
    let crc = frame::checksum(&bytes[offset..offset + size]);
    bytes[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What a forger who knows the format does: recompute every frame's link,
/// hash and CRC from the first segment on, so the chain is whole again.
fn rechain(dir: &Path) {
    let mut link = None::<frame::Hash>;
    for file in segments(dir) {
        edit(&file, |bytes| {
            let mut offset = 0;
            while offset < bytes.len() && bytes[offset..].iter().any(|&b| b != 0) {
                let size =
                    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
                if let Some(link) = link {
                    bytes[offset + frame::LINK_AT..offset + frame::LINK_AT + 32]
                        .copy_from_slice(&link);
                }
                fix_crc(bytes, offset);
                let header = frame::decode(&bytes[offset..]).unwrap();
                let hash = frame::recompute_hash(&header, &bytes[offset..offset + size]);
                bytes[offset + frame::HASH_AT..offset + frame::HASH_AT + 32].copy_from_slice(&hash);
                fix_crc(bytes, offset);
                link = Some(hash);
                offset += size;
            }
        });
    }
}

fn options() -> VerifyOptions {
    VerifyOptions::default()
}

fn first_finding(dir: &Path) -> Finding {
    match verify(dir, &options()) {
        Ok(report) => panic!("tampering went unnoticed: {report:?}"),
        Err(VerifyError::Tampered { findings, .. }) => findings[0].clone(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn assert_names(finding: &Finding, frame: &Located) {
    assert_eq!(finding.file, frame.name(), "{finding}");
    assert_eq!(finding.offset, Some(frame.offset as u64), "{finding}");
    assert_eq!(finding.index, Some(frame.header.index), "{finding}");
    let message = finding.to_string();
    assert!(message.contains(&frame.name()), "{message}");
    assert!(
        message.contains(&format!("byte offset {}", frame.offset)),
        "{message}"
    );
}

#[test]
fn an_intact_directory_verifies_with_a_summary() {
    let fixture = fixture();
    let report: Report = verify(&fixture.path, &options()).unwrap();
    assert!(report.segments >= 3, "{report:?}");
    assert_eq!(report.events, 400);
    assert!(report.batches >= 40, "{report:?}");
    assert_eq!(report.checkpoints, 1);
    assert_eq!(report.signatures, 1);
    assert_eq!(report.signers_unpinned, 0);
    assert_eq!(report.key_files, 2);
    assert_eq!(report.next_index, fixture.checkpoint_index + 1);
    assert!(report.files.iter().any(|f| f == "log.meta"));
    assert!(report.files.iter().any(|f| f == "state.snapshot"));
    assert_eq!(
        fixture.checkpoint.head,
        frame_at(&fixture.path, fixture.checkpoint.index)
            .header
            .hash
    );
    // The same head is what the checkpoint signed.
    fixture.checkpoint.verify_signature().unwrap();
    assert_eq!(fixture.checkpoint.public_key, fixture.key.public_key());
}

#[test]
fn a_flipped_payload_byte_is_named() {
    let fixture = fixture();
    let target = middle_batch(&fixture.path);
    edit(&target.file, |b| {
        b[target.offset + FRAME_HEADER_SIZE + 30] ^= 0x20
    });
    let finding = first_finding(&fixture.path);
    assert_names(&finding, &target);
    assert!(matches!(
        finding.reason,
        FindingReason::Frame(FrameError::Checksum { .. })
    ));
}

#[test]
fn a_flipped_header_byte_is_named() {
    let fixture = fixture();
    let target = middle_batch(&fixture.path);
    // The term field.
    edit(&target.file, |b| b[target.offset + 25] ^= 0x01);
    let finding = first_finding(&fixture.path);
    assert_names(&finding, &target);
    assert!(matches!(
        finding.reason,
        FindingReason::Frame(FrameError::Checksum { .. })
    ));
}

#[test]
fn a_payload_rewritten_with_a_recomputed_crc_is_caught_by_the_chain() {
    let fixture = fixture();
    let target = middle_batch(&fixture.path);
    edit(&target.file, |b| {
        b[target.offset + FRAME_HEADER_SIZE + 30] ^= 0x20;
        fix_crc(b, target.offset);
    });
    // The CRC alone no longer sees anything.
    let bytes = std::fs::read(&target.file).unwrap();
    frame::decode(&bytes[target.offset..]).expect("the CRC matches");
    let finding = first_finding(&fixture.path);
    assert_names(&finding, &target);
    assert!(
        matches!(finding.reason, FindingReason::HashMismatch { .. }),
        "{finding}"
    );
}

#[test]
fn a_removed_record_is_named() {
    let fixture = fixture();
    let target = middle_batch(&fixture.path);
    let size = target.header.size as usize;
    edit(&target.file, |b| {
        b.drain(target.offset..target.offset + size);
    });
    let finding = first_finding(&fixture.path);
    // The record after it now sits where it was, with the wrong index.
    assert_names(&finding, &target);
    assert_eq!(
        finding.reason,
        FindingReason::Frame(FrameError::Index {
            expected: target.header.index,
            found: target.header.index + 1
        })
    );
}

/// A removed record whose successors were renumbered, with CRCs and their
/// own hashes recomputed: only the link shows the gap.
#[test]
fn a_removed_and_renumbered_record_is_caught_by_the_link() {
    let fixture = fixture();
    let target = middle_batch(&fixture.path);
    let following: Vec<Located> = frames(&fixture.path)
        .into_iter()
        .filter(|f| f.file == target.file && f.offset > target.offset)
        .collect();
    let size = target.header.size as usize;
    edit(&target.file, |b| {
        b.drain(target.offset..target.offset + size);
        // Renumber the rest of this segment; later segments are named by
        // their first index, so pad this one with the record again at
        // its end to keep the count (a forger keeps files consistent).
        for f in &following {
            let at = f.offset - size;
            let index = f.header.index - 1;
            b[at + 16..at + 24].copy_from_slice(&index.to_le_bytes());
            fix_crc(b, at);
            let header = frame::decode(&b[at..]).unwrap();
            let hash = frame::recompute_hash(&header, &b[at..at + f.header.size as usize]);
            b[at + frame::HASH_AT..at + frame::HASH_AT + 32].copy_from_slice(&hash);
            fix_crc(b, at);
        }
    });
    let finding = first_finding(&fixture.path);
    assert_names(&finding, &target);
    assert!(
        matches!(finding.reason, FindingReason::LinkMismatch { .. }),
        "{finding}"
    );
}

#[test]
fn two_swapped_records_are_named() {
    let fixture = fixture();
    let first = middle_batch(&fixture.path);
    let second = frame_at(&fixture.path, first.header.index + 1);
    assert_eq!(second.file, first.file);
    let (a, b_size) = (first.header.size as usize, second.header.size as usize);
    edit(&first.file, |b| {
        let one = b[first.offset..first.offset + a].to_vec();
        let two = b[second.offset..second.offset + b_size].to_vec();
        let swapped = [two, one].concat();
        b.splice(first.offset..first.offset + a + b_size, swapped);
    });
    let finding = first_finding(&fixture.path);
    assert_names(&finding, &first);
    assert!(
        matches!(
            finding.reason,
            FindingReason::Frame(FrameError::Index { .. })
        ),
        "{finding}"
    );
}

#[test]
fn swapped_records_renumbered_and_rehashed_break_the_link() {
    let fixture = fixture();
    let first = middle_batch(&fixture.path);
    let second = frame_at(&fixture.path, first.header.index + 1);
    let (a, b_size) = (first.header.size as usize, second.header.size as usize);
    edit(&first.file, |b| {
        let mut one = b[first.offset..first.offset + a].to_vec();
        let mut two = b[second.offset..second.offset + b_size].to_vec();
        // Give each the other's index, keep their own links, rehash.
        for (bytes, index) in [
            (&mut two, first.header.index),
            (&mut one, second.header.index),
        ] {
            bytes[16..24].copy_from_slice(&index.to_le_bytes());
            fix_crc(bytes, 0);
            let header = frame::decode(bytes).unwrap();
            let hash = frame::recompute_hash(&header, bytes);
            bytes[frame::HASH_AT..frame::HASH_AT + 32].copy_from_slice(&hash);
            fix_crc(bytes, 0);
        }
        b.splice(first.offset..first.offset + a + b_size, [two, one].concat());
    });
    let finding = first_finding(&fixture.path);
    assert_names(&finding, &first);
    assert!(
        matches!(finding.reason, FindingReason::LinkMismatch { .. }),
        "{finding}"
    );
}

#[test]
fn a_forged_checkpoint_signature_is_named() {
    let fixture = fixture();
    let target = frame_at(&fixture.path, fixture.checkpoint_index);
    let signature = fixture.checkpoint.signature.clone();
    edit(&target.file, |b| {
        let size = target.header.size as usize;
        let frame = &b[target.offset..target.offset + size];
        let at = frame
            .windows(signature.len())
            .position(|w| w == signature.as_slice())
            .expect("the signature is in the entry")
            + target.offset;
        b[at + 5] ^= 0x01;
        // Keep the frame and the chain consistent: only the key can help.
        fix_crc(b, target.offset);
        let header = frame::decode(&b[target.offset..]).unwrap();
        let hash = frame::recompute_hash(&header, &b[target.offset..target.offset + size]);
        b[target.offset + frame::HASH_AT..target.offset + frame::HASH_AT + 32]
            .copy_from_slice(&hash);
        fix_crc(b, target.offset);
    });
    let finding = first_finding(&fixture.path);
    assert_names(&finding, &target);
    assert!(
        matches!(finding.reason, FindingReason::Checkpoint(_)),
        "{finding}"
    );
}

#[test]
fn a_checkpoint_signed_by_an_untrusted_key_is_named() {
    let fixture = fixture();
    let target = frame_at(&fixture.path, fixture.checkpoint_index);
    let forger = KeyPair::generate(DISTID).unwrap();
    let forged =
        sluice_audit::checkpoint::sign(&forger, fixture.checkpoint.index, fixture.checkpoint.head);
    edit(&target.file, |b| {
        let size = target.header.size as usize;
        let payload = &b[target.offset + FRAME_HEADER_SIZE..target.offset + size];
        let command =
            sluice_core::raft::codec_decode_command(&bytes::Bytes::copy_from_slice(payload))
                .unwrap();
        let command = sluice_model::state::Command {
            op: sluice_model::state::Op::Checkpoint(forged),
            ..command
        };
        let mut new_payload = vec![3u8];
        new_payload.extend(postcard::to_allocvec(&command).unwrap());
        let mut header = target.header;
        header.size = frame::frame_size(new_payload.len()) as u32;
        let mut encoded = Vec::new();
        frame::encode(&mut encoded, &header, &new_payload, None);
        b.splice(target.offset..target.offset + size, encoded);
    });
    let finding = first_finding(&fixture.path);
    assert_names(&finding, &target);
    assert!(finding.to_string().contains("no trusted key"), "{finding}");
}

/// A forger rewrites a batch and recomputes the whole chain after it: the
/// frames and links all check, and only the signed checkpoint shows it.
#[test]
fn a_recomputed_chain_is_caught_by_the_signed_checkpoint() {
    let fixture = fixture();
    let target = middle_batch(&fixture.path);
    // Backdate the batch: its command timestamp follows the tag byte (the
    // batch's own checksum does not cover it).
    edit(&target.file, |b| {
        b[target.offset + FRAME_HEADER_SIZE + 4] ^= 0x20
    });
    rechain(&fixture.path);
    let checkpoint = frame_at(&fixture.path, fixture.checkpoint_index);
    let finding = first_finding(&fixture.path);
    assert_names(&finding, &checkpoint);
    let message = finding.to_string();
    assert!(
        message.contains("was changed and the chain recomputed"),
        "{message}"
    );
}

#[test]
fn every_other_file_is_covered() {
    let fixture = fixture();
    let meta = fixture.path.join("log.meta");
    edit(&meta, |b| b[20] ^= 0x01);
    let finding = first_finding(&fixture.path);
    assert_eq!(finding.file, "log.meta", "{finding}");
    edit(&meta, |b| b[20] ^= 0x01);
    verify(&fixture.path, &options()).unwrap();

    let public = fixture.path.join("node.pub.pem");
    let original = std::fs::read_to_string(&public).unwrap();
    let other = KeyPair::generate(DISTID).unwrap();
    std::fs::write(&public, other.public_pem()).unwrap();
    let finding = first_finding(&fixture.path);
    assert_eq!(finding.file, "node.pub.pem", "{finding}");
    std::fs::write(&public, original.replace('A', "B")).unwrap();
    let finding = first_finding(&fixture.path);
    assert_eq!(finding.file, "node.pub.pem", "{finding}");
    std::fs::write(&public, &original).unwrap();

    let snapshot = fixture.path.join("state.snapshot");
    assert!(snapshot.exists());
    edit(&snapshot, |b| {
        let last = b.len() - 1;
        b[last] ^= 0x01;
    });
    let finding = first_finding(&fixture.path);
    assert_eq!(finding.file, "state.snapshot", "{finding}");
    edit(&snapshot, |b| {
        let last = b.len() - 1;
        b[last] ^= 0x01;
    });

    std::fs::write(fixture.path.join("notes.txt"), b"hello").unwrap();
    let finding = first_finding(&fixture.path);
    assert_eq!(finding.file, "notes.txt");
    assert_eq!(finding.reason, FindingReason::UnknownFile);
}

#[test]
fn a_pinned_key_rejects_checkpoints_by_others() {
    let fixture = fixture();
    std::fs::remove_file(fixture.path.join("node.key.pem")).unwrap();
    std::fs::remove_file(fixture.path.join("node.pub.pem")).unwrap();
    // Without any key, signatures verify but their signer is not pinned.
    let report = verify(&fixture.path, &options()).unwrap();
    assert_eq!(report.signers_unpinned, 1);
    let pinned = VerifyOptions {
        trusted_keys: vec![fixture.key.public_key()],
    };
    verify(&fixture.path, &pinned).unwrap();
    let other = VerifyOptions {
        trusted_keys: vec![
            KeyPair::generate(keys::DISTID_DEFAULT)
                .unwrap()
                .public_key(),
        ],
    };
    assert!(verify(&fixture.path, &other).is_err());
}

#[test]
fn a_spares_zeros_verify_and_any_other_byte_there_is_named() {
    let fixture = fixture();
    let path = &fixture.path;
    let batch = middle_batch(path);
    let bytes = std::fs::read(&batch.file).unwrap();
    let payload =
        bytes[batch.offset + FRAME_HEADER_SIZE..batch.offset + batch.header.size as usize].to_vec();
    let disk = OsDisk::open(path).unwrap();
    let log_options = Options {
        segment_size: 16 * 1024,
        ..Options::default()
    };
    let mut log = Log::open(disk, std::sync::Arc::new(OsClock::new()), log_options).unwrap();
    let append = |log: &mut Log| {
        let index = log.next_index();
        let entry = Entry {
            index,
            term: batch.header.term,
            kind: batch.header.kind,
            timestamp_ms: batch.header.timestamp_ms,
            payload: &payload,
            payload_digest: None,
        };
        log.append(&[entry], PersistMode::SyncData).unwrap();
    };
    // Copies of a real batch, until the log wants a spare; then onto it.
    let mut job = loop {
        if let Some(job) = log.spare_job() {
            break job;
        }
        append(&mut log);
    };
    while !job.step().unwrap() {}
    log.complete_spare(job, Ok(()));
    append(&mut log);
    let active = log.segments().last().unwrap().clone();
    let active_path = path.join(&active.name);
    assert_eq!(std::fs::metadata(&active_path).unwrap().len(), 16 * 1024);
    // The next spare, written but not yet handed back: on disk as it is
    // while a node runs.
    let mut next = log.spare_job().expect("wanted again after the roll");
    while !next.step().unwrap() {}
    drop(log);

    let report = verify(path, &options()).unwrap();
    assert_eq!(report.next_index, active.next);
    assert_eq!(report.zero_bytes, 2 * 16 * 1024 - active.size);

    let spare = path.join(SPARE_NAME);
    edit(&spare, |b| b[100] = 1);
    let finding = first_finding(path);
    assert_eq!(
        (finding.file.as_str(), finding.offset, &finding.reason),
        (SPARE_NAME, Some(100), &FindingReason::SpareNotZero)
    );
    edit(&spare, |b| b[100] = 0);

    // A byte among the active segment's zeros is no clean end.
    edit(&active_path, |b| b[active.size as usize + 50] = 7);
    let finding = first_finding(path);
    assert_eq!(finding.file, active.name);
    assert_eq!(
        (finding.offset, finding.index),
        (Some(active.size), Some(active.next))
    );
}
