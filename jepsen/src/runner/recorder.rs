//! The recorder: every client operation and nemesis action of a run, in
//! the order they happened, as the [`sluice_jepsen::History`] format wants
//! it. Times are monotonic nanoseconds since the recorder was made, taken
//! under the lock that appends, so the history's times never decrease.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use sluice_jepsen::{History, NemesisOp, Op, OpKind, Payload};

/// One line of `nemesis.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NemesisRecord {
    /// Monotonic nanoseconds since the start of the run (the history's
    /// clock).
    pub(crate) time_ns: u64,
    /// `start`, `heal`, or `note` (something the nemesis observed, such as
    /// a node that exited on its own).
    pub(crate) phase: &'static str,
    /// The fault kind, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    /// What was done, for people.
    pub(crate) action: String,
    /// Whether every command of the action succeeded.
    pub(crate) ok: bool,
}

/// Records a run's history.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    nemesis: Mutex<Vec<NemesisRecord>>,
    next_process: AtomicU64,
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub(crate) fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            nemesis: Mutex::new(Vec::new()),
            // Process 0 is the nemesis.
            next_process: AtomicU64::new(1),
        }
    }

    /// A fresh process id (a client's new identity).
    pub(crate) fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    fn push(&self, process: u64, kind: OpKind, f: Payload) {
        let mut ops = self.ops.lock().expect("history lock");
        let time_ns = self.start.elapsed().as_nanos() as u64;
        ops.push(Op {
            process,
            kind,
            time_ns,
            f,
        });
    }

    /// Records an invocation (results stripped).
    pub(crate) fn invoke(&self, process: u64, f: impl Into<Payload>) {
        self.push(process, OpKind::Invoke, f.into().invocation());
    }

    /// Records an `ok` completion.
    pub(crate) fn ok(&self, process: u64, f: impl Into<Payload>) {
        self.push(process, OpKind::Ok, f.into());
    }

    /// Records a `fail` completion: the op definitely did not take effect.
    pub(crate) fn fail(&self, process: u64, f: impl Into<Payload>) {
        self.push(process, OpKind::Fail, f.into());
    }

    /// Records an `info` completion: the outcome is unknown. The caller
    /// must continue under a new process id.
    pub(crate) fn info(&self, process: u64, f: impl Into<Payload>) {
        self.push(process, OpKind::Info, f.into());
    }

    /// Records a nemesis action in both the history and `nemesis.jsonl`.
    pub(crate) fn nemesis(
        &self,
        phase: &'static str,
        kind: Option<&'static str>,
        action: String,
        ok: bool,
    ) {
        let mut ops = self.ops.lock().expect("history lock");
        let time_ns = self.start.elapsed().as_nanos() as u64;
        let label = match kind {
            Some(kind) => format!("{phase} {kind}: {action}"),
            None => format!("{phase}: {action}"),
        };
        ops.push(Op {
            process: 0,
            kind: OpKind::Info,
            time_ns,
            f: Payload::Nemesis(NemesisOp { action: label }),
        });
        self.nemesis
            .lock()
            .expect("nemesis lock")
            .push(NemesisRecord {
                time_ns,
                phase,
                kind,
                action,
                ok,
            });
    }

    /// The history so far.
    pub(crate) fn history(&self) -> History {
        History::from(self.ops.lock().expect("history lock").clone())
    }

    /// The nemesis records so far.
    pub(crate) fn nemesis_records(&self) -> Vec<NemesisRecord> {
        self.nemesis.lock().expect("nemesis lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_jepsen::SendOp;

    #[test]
    fn times_never_decrease_and_invocations_carry_no_results() {
        let recorder = Recorder::new();
        let process = recorder.new_process();
        assert_ne!(process, 0, "process 0 is the nemesis");
        recorder.invoke(process, SendOp::new("t", "a").acked(0, 3));
        recorder.nemesis("start", Some("kill"), "kill -9 node 2".into(), true);
        recorder.ok(process, SendOp::new("t", "a").acked(0, 3));
        let history = recorder.history();
        assert_eq!(history.ops.len(), 3);
        assert!(history.ops.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
        let Payload::Send(invoked) = &history.ops[0].f else {
            panic!("a send")
        };
        assert_eq!(invoked.offset, None);
        assert_eq!(recorder.nemesis_records().len(), 1);
        // The checker accepts it: one ack, no final read is malformed, so
        // the verdict is not vacuously valid.
        let report = sluice_jepsen::check(&history);
        assert!(!report.valid);
    }
}
