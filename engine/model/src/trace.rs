//! Stage trace of the client write path (feature `stage-trace`, off in
//! every normal build; the [`stage!`](crate::stage) call sites expand to
//! nothing without it).
//!
//! Each hop of a publish through the client protocol records a timestamp
//! keyed by the request id of its frame (transport and node stages) or by
//! the event's producer stamp (batcher and apply stages); the node links
//! the two. [`take_report`] joins them per request and prints, for each
//! hop, the median and 99th percentile of the time since the hop before.
//! Timestamps come from one process-wide monotonic clock, so the client
//! and the nodes must run in one process (as `cluster_report` does).
//!
//! Hops inside "batch proposed → applied" concern Raft entries, not
//! events, and are timed where they happen instead ([`span`]): a
//! replication request from the leader's send to the follower's answer,
//! the follower's share of it (append and sync), the log's `fdatasync`,
//! and an append from the Raft core's call to its flush callback. The
//! report lists each span's percentiles after the table.

#![allow(clippy::disallowed_methods)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// One hop of a publish, in path order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// The client's transport call starts (request id known).
    ClientCall,
    /// The client's writer wrote the request frame.
    ClientWritten,
    /// The node's read loop decoded the frame.
    ServerRead,
    /// The node's handler for the request starts running.
    HandlerStart,
    /// `send_stamped` queued the event for the batcher.
    Enqueued,
    /// The batcher took the event into a batch (after its gather).
    BatchTaken,
    /// The batcher proposes the batch to Raft.
    Proposed,
    /// The state machine applied it; its responder runs.
    Applied,
    /// The node's handler has the receipt.
    Woken,
    /// The node queued the response frame for writing.
    ResponseQueued,
    /// The node's writer wrote the response frame.
    ServerWritten,
    /// The client's reader decoded the response frame.
    ClientRead,
    /// The client's call returns.
    ClientDone,
}

/// Stages in path order, with names.
pub const STAGES: [(Stage, &str); 13] = [
    (Stage::ClientCall, "client call"),
    (Stage::ClientWritten, "client frame written"),
    (Stage::ServerRead, "node frame read"),
    (Stage::HandlerStart, "node handler runs"),
    (Stage::Enqueued, "queued for batcher"),
    (Stage::BatchTaken, "batcher took it"),
    (Stage::Proposed, "batch proposed"),
    (Stage::Applied, "applied, answered"),
    (Stage::Woken, "node handler has receipt"),
    (Stage::ResponseQueued, "response queued"),
    (Stage::ServerWritten, "response written"),
    (Stage::ClientRead, "client frame read"),
    (Stage::ClientDone, "client call returns"),
];

/// Stages keyed by the producer stamp rather than the request id.
const BY_STAMP: [Stage; 4] = [
    Stage::Enqueued,
    Stage::BatchTaken,
    Stage::Proposed,
    Stage::Applied,
];

const LINK: u8 = u8::MAX;

#[derive(Clone, Copy)]
struct Rec {
    key: u64,
    stage: u8,
    ns: u64,
}

type Buffer = Arc<Mutex<Vec<Rec>>>;

static EPOCH: OnceLock<Instant> = OnceLock::new();
static BUFFERS: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());
/// Durations of the [`span`]s, by name, in the order first seen.
static SPANS: Mutex<Vec<(&'static str, Vec<u64>)>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn push(rec: Rec) {
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let buffer = local.get_or_insert_with(|| {
            let buffer = Buffer::default();
            BUFFERS.lock().unwrap().push(Arc::clone(&buffer));
            buffer
        });
        buffer.lock().unwrap().push(rec);
    });
}

/// Records that the request or event `key` reached `stage` now.
pub fn record(key: u64, stage: Stage) {
    push(Rec {
        key,
        stage: stage as u8,
        ns: now_ns(),
    });
}

/// Now, for starting a [`span`].
pub fn start() -> Instant {
    Instant::now()
}

/// Records that the part of the path called `name` took from `started`
/// until now (feature `stage-trace`; see the module docs).
pub fn span(name: &'static str, started: Instant) {
    let nanos = started.elapsed().as_nanos() as u64;
    let mut spans = SPANS.lock().unwrap();
    match spans.iter_mut().find(|(known, _)| *known == name) {
        Some((_, durations)) => durations.push(nanos),
        None => spans.push((name, vec![nanos])),
    }
}

/// Records that request `request` carries the event stamped `stamp`.
pub fn link(request: u64, stamp: u64) {
    push(Rec {
        key: request,
        stage: LINK,
        ns: stamp,
    });
}

/// The key of an event by its producer stamp and partition.
pub fn stamp_key(producer: u64, partition: u32, sequence: u64) -> u64 {
    producer.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
        ^ (u64::from(partition) << 48)
        ^ sequence
}

/// Each stage's time for one request or event, by stage number.
type Times = [Option<u64>; 13];

/// Joins and clears everything recorded so far; a table of the time each
/// hop took (median and p99, µs) over the requests seen at every hop.
pub fn take_report(title: &str) -> String {
    let Recorded {
        by_request,
        by_stamp,
        links,
    } = Recorded::index(take_records());
    let by_request_len = by_request.len();
    let (rows, seen) = complete_rows(by_request, &by_stamp, &links);
    let spans = std::mem::take(&mut *SPANS.lock().unwrap());
    let mut out = String::new();
    let _ = writeln!(out, "\nstage trace: {title}: {} requests", rows.len());
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "by request {}, by stamp {}, links {}; stages seen per request: {:?}",
            by_request_len,
            by_stamp.len(),
            links.len(),
            seen
        );
        // Embedded producers: no client frames, only the stamped hops.
        write_stamped(&mut out, by_stamp);
        write_spans(&mut out, spans);
        return out;
    }
    write_hops(&mut out, &rows);
    write_spans(&mut out, spans);
    out
}

/// Every record of every thread so far, taken out of their buffers.
fn take_records() -> Vec<Rec> {
    let mut recs = Vec::new();
    for buffer in BUFFERS.lock().unwrap().iter() {
        recs.append(&mut buffer.lock().unwrap());
    }
    recs
}

/// The records sorted by what they are keyed by.
struct Recorded {
    /// Stages keyed by request id.
    by_request: HashMap<u64, Times>,
    /// Stages keyed by producer stamp ([`BY_STAMP`]).
    by_stamp: HashMap<u64, Times>,
    /// The stamp of the event each request carries.
    links: HashMap<u64, u64>,
}

impl Recorded {
    fn index(recs: Vec<Rec>) -> Recorded {
        let mut recorded = Recorded {
            by_request: HashMap::new(),
            by_stamp: HashMap::new(),
            links: HashMap::new(),
        };
        for rec in recs {
            if rec.stage == LINK {
                recorded.links.insert(rec.key, rec.ns);
                continue;
            }
            let stamped = BY_STAMP.iter().any(|s| *s as u8 == rec.stage);
            let map = if stamped {
                &mut recorded.by_stamp
            } else {
                &mut recorded.by_request
            };
            map.entry(rec.key).or_default()[rec.stage as usize] = Some(rec.ns);
        }
        recorded
    }
}

/// Each request's times with its event's stamped stages filled in; the
/// requests seen at every stage, and how many requests each stage saw.
fn complete_rows(
    by_request: HashMap<u64, Times>,
    by_stamp: &HashMap<u64, Times>,
    links: &HashMap<u64, u64>,
) -> (Vec<[u64; 13]>, [usize; 13]) {
    let mut rows: Vec<[u64; 13]> = Vec::new();
    let mut seen = [0usize; 13];
    for (request, mut times) in by_request {
        if let Some(stamp) = links.get(&request) {
            if let Some(stamped) = by_stamp.get(stamp) {
                for stage in BY_STAMP {
                    times[stage as usize] = stamped[stage as usize];
                }
            }
        }
        for (i, t) in times.iter().enumerate() {
            seen[i] += usize::from(t.is_some());
        }
        if times.iter().all(Option::is_some) {
            rows.push(times.map(Option::unwrap));
        }
    }
    (rows, seen)
}

/// The table of hops, one line per pair of consecutive stages and one
/// for the whole call.
fn write_hops(out: &mut String, rows: &[[u64; 13]]) {
    let _ = writeln!(out, "| hop | p50 µs | p99 µs | mean µs |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let mut line = |name: &str, deltas: Vec<i64>| {
        let (p50, p99, mean) = summary(deltas);
        let _ = writeln!(out, "| {name} | {p50:.1} | {p99:.1} | {mean:.1} |");
    };
    for pair in STAGES.windows(2) {
        let (from, to) = (pair[0].0 as usize, pair[1].0 as usize);
        let deltas = rows.iter().map(|r| r[to] as i64 - r[from] as i64).collect();
        line(&format!("{} → {}", pair[0].1, pair[1].1), deltas);
    }
    let deltas = rows.iter().map(|r| r[12] as i64 - r[0] as i64).collect();
    line("end to end (client call → returns)", deltas);
}

/// The hops of events published in process (no request to link them to):
/// queued for the batcher → applied.
fn write_stamped(out: &mut String, by_stamp: HashMap<u64, Times>) {
    let rows: Vec<[u64; 4]> = by_stamp
        .values()
        .filter_map(|times| {
            let mut row = [0; 4];
            for (slot, stage) in row.iter_mut().zip(BY_STAMP) {
                *slot = times[stage as usize]?;
            }
            Some(row)
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "{} events published in process", rows.len());
    let _ = writeln!(out, "| hop | p50 µs | p99 µs | mean µs |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let name = |stage: Stage| {
        STAGES
            .iter()
            .find(|(s, _)| *s == stage)
            .map_or("?", |s| s.1)
    };
    for i in 0..BY_STAMP.len() - 1 {
        let (p50, p99, mean) =
            summary(rows.iter().map(|r| r[i + 1] as i64 - r[i] as i64).collect());
        let _ = writeln!(
            out,
            "| {} → {} | {p50:.1} | {p99:.1} | {mean:.1} |",
            name(BY_STAMP[i]),
            name(BY_STAMP[i + 1])
        );
    }
}

/// The spans' percentiles, on every node together.
fn write_spans(out: &mut String, spans: Vec<(&'static str, Vec<u64>)>) {
    if spans.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n| span (every node) | count | p50 µs | p99 µs | mean µs |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (name, durations) in spans {
        let count = durations.len();
        let (p50, p99, mean) = summary(durations.into_iter().map(|d| d as i64).collect());
        let _ = writeln!(
            out,
            "| {name} | {count} | {p50:.1} | {p99:.1} | {mean:.1} |"
        );
    }
}

/// The median, 99th percentile and mean of some nanosecond counts, in µs
/// (at least one).
fn summary(mut nanos: Vec<i64>) -> (f64, f64, f64) {
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    let mean = nanos.iter().sum::<i64>() as f64 / nanos.len() as f64 / 1000.0;
    (at(0.5), at(0.99), mean)
}
