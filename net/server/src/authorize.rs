//! What each client request needs: the map from a [`ClientRequest`] to the
//! accesses ([`Access`]: an operation on a resource) a node checks before
//! it does anything.
//!
//! | request | needs |
//! |---|---|
//! | `Metadata` | nothing; its topics are filtered to those the caller may see |
//! | `ChainHash` | `audit-export` on the audit trail (nodes ask it of each other) |
//! | `Initialize`, `AddNode`, `RemoveNode` | `admin` on the cluster |
//! | `Security`, `SecurityList` | `admin` on the cluster |
//! | `Write(CreateTopic)` | `create` on the topic |
//! | `Write(AlterTopic)` | `alter` on the topic |
//! | `Write(Erase)` | `erase` on the audit trail |
//! | `Write(InitProducer)` | nothing (every principal that reached the client protocol); a named producer's name must lie inside the caller's tenant |
//! | `Write(JoinGroup)` | `consume` on the group and on each topic |
//! | `Write(LeaveGroup)` | `consume` on the group |
//! | `Write(Heartbeat)`, `Group` | `consume` on the group and on each topic the member subscribes to (their names come back in the answer) |
//! | `Write(CommitOffsets)`, `Committed` | `consume` on the group and on each topic named |
//! | `Write(Transaction)` | `publish` on each output's topic, and what a commit of its offsets needs |
//! | `Publish` | `publish` on each event's topic |
//! | `Fetch`, `FetchBounded` | `consume` on the topic |
//! | `Write` of an internal operation (publish, retention, no-op, checkpoint) | `admin` on the cluster (the bus refuses them anyway) |
//!
//! Dead-letter replay (`sluice dlq replay`) runs as the replay group
//! ([`REPLAY_GROUP`]), shared by every replay: joining it, heartbeating,
//! leaving and committing its offsets need `replay` on the dead-letter
//! topics involved instead of `consume` on the group, so a tenant can
//! replay its own dead letters; reading them (`Fetch`, `Committed`) needs
//! `consume` on the dead-letter topic like any read.
//!
//! The map names every resource from the request itself, or from the
//! member's own subscription in the state: never from whether a name
//! exists, so a refusal for another tenant's name is the same whether the
//! name exists or not.

use sluice_model::names::REPLAY_GROUP;
use sluice_model::security::{Access, Denied, Operation, Principal, Resource};
use sluice_model::state::{OffsetCommit, Op, State};

use sluice_client::protocol::ClientRequest;

/// One thing a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// An access the rules must allow.
    Access(Access<'a>),
    /// A producer name that must lie inside the caller's tenant.
    ProducerName(&'a str),
}

fn access(operation: Operation, resource: Resource<'_>) -> Need<'_> {
    Need::Access(Access {
        operation,
        resource,
    })
}

/// Calls `check` on everything `request` needs, stopping at the first
/// refusal. `state` supplies a member's subscription (heartbeats and
/// group reads name no topics).
pub fn check_needs<'a>(
    request: &'a ClientRequest,
    state: &'a State,
    mut check: impl FnMut(Need<'a>) -> Result<(), Denied>,
) -> Result<(), Denied> {
    use Operation::{Admin, AuditExport, Consume, Publish};
    match request {
        ClientRequest::Metadata => Ok(()),
        ClientRequest::ChainHash { .. } => check(access(AuditExport, Resource::Audit)),
        ClientRequest::Initialize { .. }
        | ClientRequest::AddNode { .. }
        | ClientRequest::RemoveNode { .. }
        | ClientRequest::Security(_)
        | ClientRequest::SecurityList { .. } => check(access(Admin, Resource::Cluster)),
        ClientRequest::Publish(events) => {
            let mut last = None;
            for event in events {
                if last != Some(event.topic.as_str()) {
                    check(access(Publish, Resource::Topic(&event.topic)))?;
                    last = Some(&event.topic);
                }
            }
            Ok(())
        }
        ClientRequest::Fetch { topic, .. } | ClientRequest::FetchBounded { topic, .. } => {
            check(access(Consume, Resource::Topic(topic)))
        }
        ClientRequest::Group { group, member } => member_needs(state, group, member, check),
        ClientRequest::Committed { group, topic, .. } => {
            if group != REPLAY_GROUP {
                check(access(Consume, Resource::Group(group)))?;
            }
            check(access(Consume, Resource::Topic(topic)))
        }
        ClientRequest::Write(op) => op_needs(op, state, check),
    }
}

fn op_needs<'a>(
    op: &'a Op,
    state: &'a State,
    mut check: impl FnMut(Need<'a>) -> Result<(), Denied>,
) -> Result<(), Denied> {
    use Operation::{Admin, Alter, Consume, Create, Erase, Publish, Replay};
    match op {
        Op::CreateTopic { name, .. } => check(access(Create, Resource::Topic(name))),
        Op::AlterTopic { name, .. } => check(access(Alter, Resource::Topic(name))),
        Op::Erase(_) => check(access(Erase, Resource::Audit)),
        Op::InitProducer { name: None } => Ok(()),
        Op::InitProducer { name: Some(name) } => check(Need::ProducerName(name)),
        Op::JoinGroup { group, topics, .. } => {
            let operation = if group == REPLAY_GROUP {
                Replay
            } else {
                check(access(Consume, Resource::Group(group)))?;
                Consume
            };
            topics
                .iter()
                .try_for_each(|topic| check(access(operation, Resource::Topic(topic))))
        }
        Op::LeaveGroup { group, member } if group == REPLAY_GROUP => {
            member_needs(state, group, member, check)
        }
        Op::LeaveGroup { group, .. } => check(access(Consume, Resource::Group(group))),
        Op::Heartbeat { group, member } => member_needs(state, group, member, check),
        Op::CommitOffsets(commit) => commit_needs(commit, &mut check),
        Op::Transaction { events, commit } => {
            let mut last = None;
            for event in events.iter() {
                if last != Some(event.topic()) {
                    check(access(Publish, Resource::Topic(event.topic())))?;
                    last = Some(event.topic());
                }
            }
            commit_needs(commit, &mut check)
        }
        // Refused by the bus whoever asks; only an admin learns so.
        Op::Publish(_) | Op::Retention { .. } | Op::Noop | Op::Checkpoint(_) | Op::Admin { .. } => {
            check(access(Admin, Resource::Cluster))
        }
    }
}

/// A commit of `commit`'s offsets: `consume` on the group and each topic,
/// or for the replay group, `replay` on each (dead-letter) topic.
fn commit_needs<'a>(
    commit: &'a OffsetCommit,
    check: &mut impl FnMut(Need<'a>) -> Result<(), Denied>,
) -> Result<(), Denied> {
    let operation = if commit.group == REPLAY_GROUP {
        Operation::Replay
    } else {
        check(access(Operation::Consume, Resource::Group(&commit.group)))?;
        Operation::Consume
    };
    commit
        .offsets
        .iter()
        .try_for_each(|(topic, _, _)| check(access(operation, Resource::Topic(topic))))
}

/// A request about one member (heartbeat, its assignment, or leaving the
/// replay group): `consume` on the group and on each topic the member
/// subscribes to, or for the replay group `replay` on each. An unknown
/// member of the replay group needs nothing: the state refuses the
/// request, and the shared group has nothing of a tenant's to show.
fn member_needs<'a>(
    state: &'a State,
    group: &'a str,
    member: &str,
    mut check: impl FnMut(Need<'a>) -> Result<(), Denied>,
) -> Result<(), Denied> {
    let operation = if group == REPLAY_GROUP {
        Operation::Replay
    } else {
        check(access(Operation::Consume, Resource::Group(group)))?;
        Operation::Consume
    };
    let topics = state
        .group(group)
        .and_then(|info| info.members.get(member))
        .map_or(&[][..], Vec::as_slice);
    topics
        .iter()
        .try_for_each(|topic| check(access(operation, Resource::Topic(topic))))
}

/// What a request is called in a refusal to a node principal.
pub fn request_name(request: &ClientRequest) -> &'static str {
    match request {
        ClientRequest::Metadata => "metadata",
        ClientRequest::Initialize { .. } => "initialize",
        ClientRequest::AddNode { .. } => "add-node",
        ClientRequest::RemoveNode { .. } => "remove-node",
        ClientRequest::Write(_) => "write",
        ClientRequest::Publish(_) => "publish",
        ClientRequest::Fetch { .. } | ClientRequest::FetchBounded { .. } => "fetch",
        ClientRequest::Group { .. } => "group",
        ClientRequest::Committed { .. } => "committed",
        ClientRequest::Security(_) => "security",
        ClientRequest::SecurityList { .. } => "security-list",
        ClientRequest::ChainHash { .. } => "chain-hash",
    }
}

/// The refusal of any client request but `Metadata` and `ChainHash` to a
/// node: nodes speak Raft; the client protocol serves them only the probe
/// `sluice cluster add` makes and the chain check's question.
pub fn node_refusal(principal: &Principal, request: &ClientRequest) -> Denied {
    Denied {
        principal: principal.to_string(),
        operation: request_name(request).to_owned(),
        resource: "the client protocol".to_owned(),
        reason: "a node is served only metadata (the probe of `sluice cluster add`) and \
                 chain hashes (the chain check)"
            .to_owned(),
    }
}

/// The refusal of a named producer outside the caller's tenant.
pub fn producer_refusal(principal: &Principal, name: &str, reason: String) -> Denied {
    Denied {
        principal: principal.to_string(),
        operation: Operation::Publish.to_string(),
        resource: format!("producer name {name:?}"),
        reason,
    }
}
