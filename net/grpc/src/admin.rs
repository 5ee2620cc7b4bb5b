//! `sluice.v1.Admin`: topics and the cluster's status.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use prost::Message;
use sluice_client::protocol::ClientRequest;
use sluice_model::security::{Principal, Resource};
use sluice_model::state::{AdminAction, Op, RETENTION_MS_DEFAULT, Response, TopicConfig};
use tonic::{Request, Status};

use crate::proto::{
    ClusterStatusRequest, ClusterStatusResponse, CreateTopicRequest, CreateTopicResponse,
    DescribeTopicRequest, ListTopicsRequest, ListTopicsResponse, Member, PartitionRange,
    TopicDescription, TopicSummary, admin_server::Admin,
};
use crate::{GrpcConfig, status};

pub(crate) struct AdminService {
    pub(crate) config: Arc<GrpcConfig>,
}

impl AdminService {
    fn visible(&self, principal: &Principal, topic: &str) -> bool {
        self.config.superusers.contains(principal)
            || self
                .config
                .bus
                .state()
                .security()
                .visible(principal, Resource::Topic(topic))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<tonic::Response<CreateTopicResponse>, Status> {
        let asked = request.get_ref();
        let retention_ms = if asked.retain_forever {
            None
        } else {
            Some(asked.retention_ms.unwrap_or(RETENTION_MS_DEFAULT))
        };
        let native = ClientRequest::Write(Op::CreateTopic {
            name: asked.name.clone(),
            partitions: asked.partitions,
            config: TopicConfig {
                retention_ms,
                retention_bytes: asked.retention_bytes,
            },
        });
        let principal = self.config.admit(&request, &native, asked.encoded_len())?;
        let bus = &self.config.bus;
        status::ensure_leader(bus)?;
        let ClientRequest::Write(op) = native else {
            unreachable!("built as a write above");
        };
        // As natively: the change goes into the admin trail, naming who
        // made it.
        let op = Op::Admin {
            principal,
            action: AdminAction::Apply(Box::new(op)),
        };
        match bus.propose(op).await {
            Ok(Response::TopicCreated) => Ok(tonic::Response::new(CreateTopicResponse {})),
            Ok(Response::Error(error)) => Err(Status::failed_precondition(error.to_string())),
            Ok(other) => Err(Status::internal(format!(
                "the state machine answered CreateTopic with {other:?}"
            ))),
            Err(error) => Err(status::of(bus, error)),
        }
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<tonic::Response<ListTopicsResponse>, Status> {
        let principal = self.config.admit(&request, &ClientRequest::Metadata, 0)?;
        let topics: Vec<(String, u32)> = self
            .config
            .bus
            .state()
            .topics()
            .map(|topic| (topic.name.clone(), topic.partitions))
            .collect();
        let topics = topics
            .into_iter()
            .filter(|(name, _)| self.visible(&principal, name))
            .map(|(name, partitions)| TopicSummary { name, partitions })
            .collect();
        Ok(tonic::Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<tonic::Response<TopicDescription>, Status> {
        let principal = self.config.admit(&request, &ClientRequest::Metadata, 0)?;
        let name = request.into_inner().name;
        let not_found = || Status::not_found(format!("topic {name:?} does not exist"));
        // A topic the caller may not see is answered as one that does
        // not exist: names are not disclosed.
        if !self.visible(&principal, &name) {
            return Err(not_found());
        }
        let state = self.config.bus.state();
        let topic = state.topic(&name).ok_or_else(not_found)?;
        let ranges = (0..topic.partitions)
            .map(|partition| {
                let (first, next) = state.partition_range(&name, partition).unwrap_or((0, 0));
                PartitionRange {
                    partition,
                    first,
                    next,
                }
            })
            .collect();
        Ok(tonic::Response::new(TopicDescription {
            name: topic.name.clone(),
            partitions: topic.partitions,
            retention_ms: topic.config.retention_ms,
            retention_bytes: topic.config.retention_bytes,
            created_ms: topic.created_ms,
            ranges,
        }))
    }

    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<tonic::Response<ClusterStatusResponse>, Status> {
        // The native protocol's metadata is open to every principal; so
        // is this.
        self.config.admit(&request, &ClientRequest::Metadata, 0)?;
        let bus = &self.config.bus;
        let metrics = bus.raft().metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(&id, node)| Member {
                id,
                address: node.addr.clone(),
                voter: voters.contains(&id),
            })
            .collect();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let leader = status::leader(bus).map(|(id, address)| Member {
            id,
            voter: voters.contains(&id),
            address,
        });
        Ok(tonic::Response::new(ClusterStatusResponse {
            node_id: bus.node_id(),
            role: role.to_owned(),
            term: metrics.current_term,
            leader,
            members,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            committed_index: metrics.local_committed.map_or(0, |id| id.index),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
        }))
    }
}
