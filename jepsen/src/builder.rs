//! [`HistoryBuilder`]: write histories by hand (tests) or from a recorder
//! (the simulator), with time advancing on its own.

use crate::history::{History, NemesisOp, Op, OpKind, Payload};

/// Builds a [`History`] op by op. Each op gets a time one nanosecond after
/// the previous one unless [`HistoryBuilder::advance`] moves the clock; so
/// the order of calls is the real-time order.
#[derive(Debug, Default)]
pub struct HistoryBuilder {
    ops: Vec<Op>,
    time_ns: u64,
}

impl HistoryBuilder {
    /// An empty history at time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `delta_ns` (on top of the automatic tick).
    pub fn advance(&mut self, delta_ns: u64) -> &mut Self {
        self.time_ns += delta_ns;
        self
    }

    /// Appends one op and returns its index.
    pub fn op(&mut self, process: u64, kind: OpKind, f: impl Into<Payload>) -> usize {
        self.time_ns += 1;
        self.ops.push(Op {
            process,
            kind,
            time_ns: self.time_ns,
            f: f.into(),
        });
        self.ops.len() - 1
    }

    /// Appends an invocation of `f` (with results stripped, see
    /// [`Payload::invocation`]) and returns its index.
    pub fn invoke(&mut self, process: u64, f: impl Into<Payload>) -> usize {
        let f = f.into().invocation();
        self.op(process, OpKind::Invoke, f)
    }

    /// Appends an `ok` completion carrying `f` and returns its index.
    pub fn ok(&mut self, process: u64, f: impl Into<Payload>) -> usize {
        self.op(process, OpKind::Ok, f)
    }

    /// Appends a `fail` completion and returns its index.
    pub fn fail(&mut self, process: u64, f: impl Into<Payload>) -> usize {
        self.op(process, OpKind::Fail, f)
    }

    /// Appends an `info` (indeterminate) completion and returns its index.
    pub fn info(&mut self, process: u64, f: impl Into<Payload>) -> usize {
        self.op(process, OpKind::Info, f)
    }

    /// Appends an invocation and, right after it, its completion with
    /// `outcome`; returns the completion's index. The invocation carries
    /// `f` without results; the completion carries `f` as given.
    pub fn call(&mut self, process: u64, outcome: OpKind, f: impl Into<Payload>) -> usize {
        assert_ne!(
            outcome,
            OpKind::Invoke,
            "a call completes with ok, fail or info"
        );
        let f = f.into();
        self.invoke(process, f.clone());
        self.op(process, outcome, f)
    }

    /// Appends a nemesis entry (never paired, ignored by the checker).
    pub fn nemesis(&mut self, action: impl Into<String>) -> usize {
        self.op(
            0,
            OpKind::Info,
            NemesisOp {
                action: action.into(),
            },
        )
    }

    /// The number of ops so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no op has been appended.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The finished history.
    pub fn build(self) -> History {
        History { ops: self.ops }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::SendOp;

    #[test]
    fn call_strips_results_from_the_invocation_and_ticks_time() {
        let mut builder = HistoryBuilder::new();
        let ok = builder.call(1, OpKind::Ok, SendOp::new("t", "a").acked(0, 7));
        let history = builder.build();
        assert_eq!(ok, 1);
        let Payload::Send(invoked) = &history.ops[0].f else {
            panic!("not a send")
        };
        assert_eq!(invoked.offset, None);
        let Payload::Send(acked) = &history.ops[1].f else {
            panic!("not a send")
        };
        assert_eq!(acked.offset, Some(7));
        assert!(history.ops[0].time_ns < history.ops[1].time_ns);
    }
}
