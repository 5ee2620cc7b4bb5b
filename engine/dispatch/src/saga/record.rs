//! The undo log of sagas, as data: the records a coordinator writes to
//! [`SAGA_TOPIC`](sluice_model::names::SAGA_TOPIC) and the progress of one
//! saga rebuilt from them. Pure: no clock, no I/O, so the same code decides
//! what to do next for a saga being run and for one found pending after a
//! crash.
//!
//! ```text
//! PreCommit(0) ─► PreCommit(1) ─► … ─► PreCommit(n-1) + Commit          (confirmed)
//!      │               │
//!      └──── Failed(k) ─► Compensate(k-1) ─► … ─► Compensate(0) + Compensated
//! ```
//!
//! Invariants, each checked by [`Progress::apply`] on every record (so a
//! log that breaks one is refused, never acted on): steps pre-commit in
//! order, each once; a saga fails at most once, at the step after the
//! last one done; compensations run in reverse order, each done step
//! exactly once, and only after the failure; nothing follows `Commit` or
//! `Compensated`.

use serde::{Deserialize, Serialize};

/// One record of the undo log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The saga's id.
    pub(crate) saga: String,
    /// The saga definition's name.
    pub(crate) name: String,
    /// The coordinator that wrote it.
    pub(crate) owner: String,
    /// What changed.
    #[serde(flatten)]
    pub(crate) kind: Kind,
}

/// What a record says happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum Kind {
    /// Step `step` is done: its effect commits with this record, and
    /// `undo` is what its compensation needs. The first carries the
    /// saga's input, which every later action and compensation reads.
    PreCommit {
        step: usize,
        step_name: String,
        undo: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<serde_json::Value>,
    },
    /// Every step is done: the saga is confirmed, its undo log no longer
    /// needed.
    Commit,
    /// Step `step` was not confirmed (it failed, timed out, or the saga was
    /// abandoned): the steps before it are compensated from here on.
    Failed { step: usize, cause: String },
    /// Step `step`'s compensation ran: its effect commits with this record.
    Compensate { step: usize, step_name: String },
    /// Every step done before the failure is compensated.
    Compensated,
}

/// A record that does not follow from the ones before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct OutOfOrder(pub(crate) String);

/// How a saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Committed,
    Compensated,
}

/// One saga's progress, rebuilt from its records.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Progress {
    /// The saga's input (from its first record, or given to a new run).
    pub(crate) input: Option<serde_json::Value>,
    /// The undo value of each step done, in step order.
    pub(crate) undo: Vec<serde_json::Value>,
    /// The step that was not confirmed, and why.
    pub(crate) failed: Option<(usize, String)>,
    /// Steps compensated so far, counted from the last one done.
    pub(crate) compensated: usize,
    pub(crate) end: Option<End>,
}

/// What a saga needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Run this step's action.
    Run(usize),
    /// Run this step's compensation.
    Compensate(usize),
    /// Record `Commit` (every step is done).
    Commit,
    /// Record `Compensated` (every done step is undone).
    Finish,
    /// Nothing: it ended.
    Done(End),
}

impl Progress {
    /// The progress of a saga about to run with `input`.
    pub(crate) fn starting(input: serde_json::Value) -> Progress {
        Progress {
            input: Some(input),
            ..Progress::default()
        }
    }

    /// Takes one record of a saga of `steps` steps into account, or says
    /// why it cannot follow the records before it.
    pub(crate) fn apply(&mut self, kind: &Kind, steps: usize) -> Result<(), OutOfOrder> {
        let refuse = |what: String| Err(OutOfOrder(what));
        if let Some(end) = self.end {
            return refuse(format!("a record after the saga ended ({end:?}): {kind:?}"));
        }
        match kind {
            Kind::PreCommit {
                step, undo, input, ..
            } => {
                if self.failed.is_some() || *step != self.undo.len() || *step >= steps {
                    return refuse(format!(
                        "pre-commit of step {step} after {} of {steps} steps done (failed: {:?})",
                        self.undo.len(),
                        self.failed
                    ));
                }
                match (step, input) {
                    (0, Some(input)) => self.input = Some(input.clone()),
                    (0, None) => return refuse("the first pre-commit lacks the input".into()),
                    _ => {}
                }
                self.undo.push(undo.clone());
            }
            Kind::Commit => {
                if self.failed.is_some() || self.undo.len() != steps {
                    return refuse(format!(
                        "commit after {} of {steps} steps (failed: {:?})",
                        self.undo.len(),
                        self.failed
                    ));
                }
                self.end = Some(End::Committed);
            }
            Kind::Failed { step, cause } => {
                if self.failed.is_some() || *step != self.undo.len() || *step >= steps {
                    return refuse(format!(
                        "failure of step {step} after {} of {steps} steps done (failed: {:?})",
                        self.undo.len(),
                        self.failed
                    ));
                }
                self.failed = Some((*step, cause.clone()));
            }
            Kind::Compensate { step, .. } => {
                let expected = self.next_compensation();
                if self.failed.is_none() || expected != Some(*step) {
                    return refuse(format!(
                        "compensation of step {step}, expected {expected:?} (failed: {:?})",
                        self.failed
                    ));
                }
                self.compensated += 1;
            }
            Kind::Compensated => {
                if self.failed.is_none() || self.compensated != self.undo.len() {
                    return refuse(format!(
                        "compensated with {} of {} done steps undone (failed: {:?})",
                        self.compensated,
                        self.undo.len(),
                        self.failed
                    ));
                }
                self.end = Some(End::Compensated);
            }
        }
        Ok(())
    }

    /// The next step to compensate, if the saga failed and one is left.
    fn next_compensation(&self) -> Option<usize> {
        self.failed.as_ref()?;
        (self.compensated < self.undo.len()).then(|| self.undo.len() - 1 - self.compensated)
    }

    /// What a saga of `steps` steps needs next.
    pub(crate) fn next(&self, steps: usize) -> Next {
        if let Some(end) = self.end {
            return Next::Done(end);
        }
        if self.failed.is_some() {
            return match self.next_compensation() {
                Some(step) => Next::Compensate(step),
                None => Next::Finish,
            };
        }
        if self.undo.len() < steps {
            Next::Run(self.undo.len())
        } else {
            Next::Commit
        }
    }

    /// The steps compensated so far, in the order they were.
    pub(crate) fn compensated_steps(&self) -> Vec<usize> {
        (0..self.compensated)
            .map(|n| self.undo.len() - 1 - n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(step: usize) -> Kind {
        Kind::PreCommit {
            step,
            step_name: format!("s{step}"),
            undo: serde_json::json!(step),
            input: (step == 0).then(|| serde_json::json!("in")),
        }
    }

    fn compensate(step: usize) -> Kind {
        Kind::Compensate {
            step,
            step_name: format!("s{step}"),
        }
    }

    fn replay(kinds: &[Kind], steps: usize) -> Result<Progress, OutOfOrder> {
        let mut progress = Progress::default();
        for kind in kinds {
            progress.apply(kind, steps)?;
        }
        Ok(progress)
    }

    #[test]
    fn a_confirmed_saga_and_a_compensated_one() {
        let done = replay(&[pre(0), pre(1), pre(2), Kind::Commit], 3).unwrap();
        assert_eq!(done.next(3), Next::Done(End::Committed));

        let failed = Kind::Failed {
            step: 2,
            cause: "no stock".into(),
        };
        let mut progress = replay(&[pre(0), pre(1)], 3).unwrap();
        assert_eq!(progress.next(3), Next::Run(2));
        progress.apply(&failed, 3).unwrap();
        assert_eq!(progress.next(3), Next::Compensate(1));
        progress.apply(&compensate(1), 3).unwrap();
        assert_eq!(progress.next(3), Next::Compensate(0));
        progress.apply(&compensate(0), 3).unwrap();
        assert_eq!(progress.next(3), Next::Finish);
        progress.apply(&Kind::Compensated, 3).unwrap();
        assert_eq!(progress.next(3), Next::Done(End::Compensated));
        assert_eq!(progress.compensated_steps(), [1, 0]);
        assert_eq!(progress.input, Some(serde_json::json!("in")));
    }

    #[test]
    fn records_out_of_order_are_refused() {
        let failed = |step| Kind::Failed {
            step,
            cause: String::new(),
        };
        let refused: [&[Kind]; 9] = [
            &[pre(1)],
            &[pre(0), pre(0)],
            &[pre(0), Kind::Commit],
            &[pre(0), failed(0)],
            &[pre(0), failed(1), compensate(0), compensate(0)],
            &[pre(0), pre(1), failed(2), compensate(0)],
            &[pre(0), compensate(0)],
            &[pre(0), failed(1), Kind::Compensated],
            &[pre(0), pre(1), pre(2), Kind::Commit, compensate(2)],
        ];
        for kinds in refused {
            assert!(replay(kinds, 3).is_err(), "{kinds:?} accepted");
        }
        let no_input = Kind::PreCommit {
            step: 0,
            step_name: "s0".into(),
            undo: serde_json::Value::Null,
            input: None,
        };
        assert!(replay(&[no_input], 3).is_err());
    }

    #[test]
    fn records_encode_as_the_names_module_documents() {
        let record = Record {
            saga: "order-7".into(),
            name: "checkout".into(),
            owner: "node-1".into(),
            kind: Kind::Failed {
                step: 1,
                cause: "timed out".into(),
            },
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["state"], "failed");
        assert_eq!(json["step"], 1);
        assert_eq!(json["saga"], "order-7");
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        let commit = serde_json::to_value(Kind::Commit).unwrap();
        assert_eq!(commit, serde_json::json!({"state": "commit"}));
    }
}
