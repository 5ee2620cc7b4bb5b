//! The batcher: coalesces concurrent publishes into one Raft entry.
//!
//! openraft's cost per entry is far above the cost of a small event, so the
//! batcher takes everything queued (up to a bound) into one `Publish`
//! entry, as Kafka and Redpanda batch records. Entries are submitted in
//! queue order with `client_write_ff`, which returns once the entry is
//! queued in Raft, so batches pipeline while earlier ones commit, and each
//! producer's events reach the log in the order it sent them. A batch's
//! publishers are answered from the state machine's apply itself (a
//! [`FnResponder`]), not from a task woken afterwards.
//!
//! With the hash chain on, the batcher also computes the entry's payload
//! digest (`raft::codec::prepare_digest`) before proposing it: the chain's
//! one pass over the batch's bytes then runs here, beside the Raft core,
//! instead of on it under the log's lock.

use std::sync::Arc;

use openraft::alias::{MpscReceiverOf, OneshotSenderOf};
use openraft::async_runtime::{MpscReceiver, OneshotSender};
use openraft::raft::ClientWriteResponse;
use openraft_rt::AsyncRuntime;

use crate::event::{BatchBuilder, Event, EventError};
use crate::io::{Clock, Disk, wall_unix_ms};
use crate::raft::{FnResponder, Raft, StateView, TypeConfig};
use crate::state::{Command, EventOutcome, Op, Response};

use super::BusError;
use super::producer::{Gauge, Receipt};

/// Publishes queued for the batcher, across all producers.
pub(crate) const QUEUE_MAX: usize = 65_536;

/// One event waiting to be batched.
pub(crate) struct Request<RT: AsyncRuntime> {
    pub(crate) event: Event,
    pub(crate) reply: OneshotSenderOf<TypeConfig<RT>, Result<Receipt, BusError>>,
    pub(crate) gauge: Arc<Gauge<RT>>,
}

type WriteResult<RT> =
    Result<ClientWriteResponse<TypeConfig<RT>>, openraft::error::ClientWriteError<TypeConfig<RT>>>;

pub(crate) async fn run<RT: AsyncRuntime, D: Disk + Clone>(
    raft: Raft<RT, D>,
    view: StateView<RT>,
    clock: Arc<dyn Clock>,
    mut requests: MpscReceiverOf<TypeConfig<RT>, Request<RT>>,
    batch_events_max: usize,
    digests: bool,
) {
    let mut builder = BatchBuilder::new();
    let mut pending = Vec::new();
    let mut last_batch = 1;
    while let Some(first) = requests.recv().await {
        let mut waiting = vec![first];
        last_batch = crate::raft::gather::<RT>(last_batch, || {
            while waiting.len() < batch_events_max {
                match requests.try_recv() {
                    Ok(next) => waiting.push(next),
                    Err(_) => break,
                }
            }
            waiting.len()
        })
        .await
        .min(batch_events_max);
        for request in waiting {
            crate::stage!(
                crate::trace::stamp_key(
                    request.event.producer.id,
                    request.event.partition,
                    request.event.producer.sequence
                ),
                BatchTaken
            );
            match builder.push(&request.event) {
                Ok(()) => pending.push(request),
                Err(EventError::BatchFull { .. }) => {
                    if !submit(&raft, &view, &*clock, digests, &mut builder, &mut pending).await {
                        return;
                    }
                    match builder.push(&request.event) {
                        Ok(()) => pending.push(request),
                        Err(error) => {
                            finish(vec![request], |_| Err(BusError::Event(error.clone())))
                        }
                    }
                }
                Err(error) => finish(vec![request], |_| Err(BusError::Event(error.clone()))),
            }
        }
        if !submit(&raft, &view, &*clock, digests, &mut builder, &mut pending).await {
            return;
        }
    }
}

/// Proposes the built batch as one entry, with its payload digest when
/// `digests` (the log chains); its publishers are answered when it is
/// applied. Returns false once Raft has stopped.
async fn submit<RT: AsyncRuntime, D: Disk + Clone>(
    raft: &Raft<RT, D>,
    view: &StateView<RT>,
    clock: &dyn Clock,
    digests: bool,
    builder: &mut BatchBuilder,
    pending: &mut Vec<Request<RT>>,
) -> bool {
    if pending.is_empty() {
        return true;
    }
    let waiting = std::mem::take(pending);
    #[cfg(feature = "stage-trace")]
    trace_all(&waiting, crate::trace::Stage::Proposed);
    let mut command = Command {
        timestamp_ms: wall_unix_ms(clock),
        op: Op::Publish(builder.finish()),
    };
    if digests {
        crate::raft::codec::prepare_digest(&mut command);
    }
    #[cfg(feature = "planted-bugs")]
    if crate::testing::planted::is_planted(crate::testing::planted::Bug::AckBeforeCommit)
        && raft.is_leader()
    {
        // The planted bug: answer from a scratch apply of the current
        // state, before any quorum has the entry.
        let mut scratch = view.read().clone();
        let index = scratch.last_applied_index().map_or(1, |index| index + 1);
        let predicted = scratch.apply(index, &command);
        return match raft.client_write_ff(command, None).await {
            Ok(()) => {
                match predicted {
                    Response::Published(outcomes) if outcomes.len() == waiting.len() => {
                        let mut outcomes = outcomes.into_iter();
                        finish(waiting, |_| {
                            receipt(outcomes.next().expect("one per event"))
                        });
                    }
                    other => finish(waiting, |_| Err(BusError::raft(format!("{other:?}")))),
                }
                true
            }
            Err(fatal) => {
                let error = fatal.to_string();
                finish(waiting, |_| Err(BusError::raft(&error)));
                false
            }
        };
    }
    let _ = view;
    let responder =
        FnResponder::new(move |result: Option<WriteResult<RT>>| answer::<RT>(result, waiting));
    match raft.client_write_ff(command, Some(responder)).await {
        Ok(()) => true,
        // Raft has stopped: the request, responder and all, was dropped
        // unanswered, which tells its publishers the bus stopped.
        Err(_fatal) => false,
    }
}

/// Records `stage` for every publish of a batch (feature `stage-trace`).
#[cfg(feature = "stage-trace")]
fn trace_all<RT: AsyncRuntime>(waiting: &[Request<RT>], stage: crate::trace::Stage) {
    for request in waiting {
        let event = &request.event;
        let key =
            crate::trace::stamp_key(event.producer.id, event.partition, event.producer.sequence);
        crate::trace::record(key, stage);
    }
}

/// Answers each publisher of an applied (or abandoned) batch; runs inside
/// the state machine's apply.
fn answer<RT: AsyncRuntime>(result: Option<WriteResult<RT>>, waiting: Vec<Request<RT>>) {
    #[cfg(feature = "stage-trace")]
    trace_all(&waiting, crate::trace::Stage::Applied);
    let outcomes = match result {
        Some(Ok(written)) => match written.data {
            Response::Published(outcomes) if outcomes.len() == waiting.len() => Ok(outcomes),
            other => Err(BusError::raft(format!(
                "unexpected answer to a publish: {other:?}"
            ))),
        },
        Some(Err(error)) => Err(BusError::from_write_error(error)),
        None => Err(BusError::raft(
            "the bus stopped before the publish was applied",
        )),
    };
    match outcomes {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            finish(waiting, |_| {
                receipt(outcomes.next().expect("one outcome per event"))
            });
        }
        Err(error) => {
            let not_leader = match &error {
                BusError::NotLeader {
                    leader_id,
                    leader_address,
                } => Some((*leader_id, leader_address.clone())),
                _ => None,
            };
            let message = error.to_string();
            finish(waiting, |_| match &not_leader {
                Some((leader_id, leader_address)) => Err(BusError::NotLeader {
                    leader_id: *leader_id,
                    leader_address: leader_address.clone(),
                }),
                None => Err(BusError::Raft(message.clone())),
            })
        }
    }
}

pub(super) fn receipt(outcome: EventOutcome) -> Result<Receipt, BusError> {
    match outcome {
        EventOutcome::Appended { partition, offset } => Ok(Receipt {
            partition,
            offset,
            duplicate: false,
        }),
        EventOutcome::Duplicate { partition, offset } => Ok(Receipt {
            partition,
            offset,
            duplicate: true,
        }),
        EventOutcome::Rejected(error) => Err(BusError::Publish(error)),
    }
}

/// Frees each request's in-flight slot, then answers it.
fn finish<RT: AsyncRuntime>(
    waiting: Vec<Request<RT>>,
    mut answer: impl FnMut(&Event) -> Result<Receipt, BusError>,
) {
    for request in waiting {
        let reply = answer(&request.event);
        request.gauge.release();
        let _ = request.reply.send(reply);
    }
}
