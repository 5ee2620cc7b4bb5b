//! `sluice.v1.Publisher`: producer sessions and batches, on the path the
//! native protocol's publishes take (`Bus::send_stamped`), so a resent
//! batch is deduplicated by its stamps exactly as a native one is.

use std::sync::Arc;

use prost::Message;
use sluice_client::protocol::ClientRequest;
use sluice_core::bus::BusError;
use sluice_model::constants::EVENTS_PER_BATCH_MAX;
use sluice_model::state::{Op, Response};
use tonic::{Request, Status};

use crate::proto::publish_result::Outcome;
use crate::proto::{
    Appended, InitProducerRequest, InitProducerResponse, PublishRequest, PublishResponse,
    PublishResult, Refused, publisher_server::Publisher,
};
use crate::{GrpcConfig, convert, status};

pub(crate) struct PublisherService {
    pub(crate) config: Arc<GrpcConfig>,
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<tonic::Response<InitProducerResponse>, Status> {
        let bus = &self.config.bus;
        let name = request.get_ref().name.clone();
        let native = ClientRequest::Write(Op::InitProducer {
            name: (!name.is_empty()).then_some(name),
        });
        let size = request.get_ref().encoded_len();
        self.config.admit(&request, &native, size)?;
        status::ensure_leader(bus)?;
        let ClientRequest::Write(op) = native else {
            unreachable!("built as a write above");
        };
        match bus.propose(op).await {
            Ok(Response::ProducerInit { id, epoch }) => {
                Ok(tonic::Response::new(InitProducerResponse {
                    producer_id: id,
                    epoch,
                }))
            }
            Ok(Response::Error(error)) => Err(Status::failed_precondition(error.to_string())),
            Ok(other) => Err(Status::internal(format!(
                "the state machine answered InitProducer with {other:?}"
            ))),
            Err(error) => Err(status::of(bus, error)),
        }
    }

    async fn publish(
        &self,
        mut request: Request<PublishRequest>,
    ) -> Result<tonic::Response<PublishResponse>, Status> {
        let bus = &self.config.bus;
        let size = request.get_ref().encoded_len();
        let events = std::mem::take(&mut request.get_mut().events);
        if events.len() > EVENTS_PER_BATCH_MAX as usize {
            return Err(Status::invalid_argument(format!(
                "{} events in one request, more than {EVENTS_PER_BATCH_MAX}: split the batch",
                events.len()
            )));
        }
        let events = events
            .into_iter()
            .enumerate()
            .map(|(index, event)| convert::event(index, event))
            .collect::<Result<Vec<_>, Status>>()?;
        let native = ClientRequest::Publish(events);
        self.config.admit(&request, &native, size)?;
        status::ensure_leader(bus)?;
        let ClientRequest::Publish(events) = native else {
            unreachable!("built as a publish above");
        };
        // Queue every event before waiting for any: the batcher gathers
        // them into as few Raft entries as it can.
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            pending.push(bus.send_stamped(event).await);
        }
        let mut results = Vec::with_capacity(pending.len());
        for sent in pending {
            let outcome = match sent {
                Ok(receipt) => match receipt.wait().await {
                    Ok(receipt) => Outcome::Appended(Appended {
                        partition: receipt.partition,
                        offset: receipt.offset,
                        duplicate: receipt.duplicate,
                    }),
                    // A definite refusal by the state machine: nothing was
                    // appended for this event.
                    Err(error @ (BusError::Publish(_) | BusError::Event(_))) => {
                        Outcome::Refused(Refused {
                            reason: error.to_string(),
                        })
                    }
                    // Anything else (leadership lost, the bus closing, a
                    // storage failure) leaves the outcome unknown: the
                    // client sends the whole batch again and the stamps
                    // deduplicate.
                    Err(error) => return Err(status::of(bus, error)),
                },
                Err(error) => Outcome::Refused(Refused {
                    reason: error.to_string(),
                }),
            };
            results.push(PublishResult {
                outcome: Some(outcome),
            });
        }
        Ok(tonic::Response::new(PublishResponse { results }))
    }
}
