//! Engine errors as gRPC status codes: not the leader is UNAVAILABLE
//! with the leader's address (also in the `sluice-leader` metadata),
//! a refusal by the state machine is FAILED_PRECONDITION with the
//! reason, a bad argument INVALID_ARGUMENT, an outcome the caller must
//! find out by retrying UNAVAILABLE, anything else INTERNAL.

use openraft::async_runtime::WatchReceiver;
use sluice_core::bus::{Bus, BusError};
use sluice_model::transport::NodeId;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// Trailing metadata naming the leader's native-protocol address, when a
/// call reached a node that does not lead.
pub(crate) const LEADER_ADDRESS: &str = "sluice-leader";
/// Trailing metadata naming the leader's node id.
pub(crate) const LEADER_ID: &str = "sluice-leader-id";

/// The leader this node knows of: its id and address.
pub(crate) fn leader(bus: &Bus) -> Option<(NodeId, String)> {
    let receiver = bus.raft().metrics();
    let metrics = receiver.borrow_watched();
    let id = metrics.current_leader?;
    let node = metrics.membership_config.membership().get_node(&id)?;
    Some((id, node.addr.clone()))
}

/// UNAVAILABLE naming the leader, unless this node leads.
pub(crate) fn ensure_leader(bus: &Bus) -> Result<(), Status> {
    let leader = leader(bus);
    match leader {
        Some((id, _)) if id == bus.node_id() => Ok(()),
        leader => Err(not_leader(leader)),
    }
}

fn not_leader(leader: Option<(NodeId, String)>) -> Status {
    let Some((id, address)) = leader else {
        return Status::unavailable(
            "this node does not lead and knows no leader (an election, or a cluster not yet \
             initialised with `sluice cluster init`); retry shortly",
        );
    };
    let mut metadata = MetadataMap::new();
    if let Ok(value) = MetadataValue::try_from(address.as_str()) {
        metadata.insert(LEADER_ADDRESS, value);
    }
    metadata.insert(LEADER_ID, MetadataValue::from(id));
    Status::with_metadata(
        Code::Unavailable,
        format!(
            "this node does not lead; node {id} at {address} does (its native address; call its \
             gRPC port instead)"
        ),
        metadata,
    )
}

/// The status for a failed engine call.
pub(crate) fn of(bus: &Bus, error: BusError) -> Status {
    match error {
        BusError::NotLeader {
            leader_id,
            leader_address,
        } => {
            let leader = match (leader_id, leader_address) {
                (Some(id), Some(address)) => Some((id, address)),
                (Some(id), None) => leader(bus).filter(|(known, _)| *known == id),
                _ => None,
            };
            not_leader(leader)
        }
        error @ (BusError::State(_)
        | BusError::Publish(_)
        | BusError::Transaction(_)
        | BusError::Signature(_)) => Status::failed_precondition(error.to_string()),
        error @ BusError::UnknownTopic { .. } => Status::not_found(error.to_string()),
        error @ (BusError::Invalid(_) | BusError::Event(_)) => {
            Status::invalid_argument(error.to_string())
        }
        error @ (BusError::Raft(_)
        | BusError::Timeout(_)
        | BusError::Closed
        | BusError::Storage(_)) => Status::unavailable(format!(
            "{error}; the outcome is unknown: retry (publishes with the same stamps)"
        )),
        error => Status::internal(error.to_string()),
    }
}
