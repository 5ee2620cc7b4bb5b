//! The network of a one-member cluster: there is nobody to talk to.
//!
//! An embedded bus is a single-member Raft cluster; adding members later is
//! a membership change that needs a real transport (the network crate).
//! Until one is configured, every attempt to reach another node fails with
//! `Unreachable`, naming what to do.

use crate::io::Env;
use std::fmt;
use std::marker::PhantomData;

use std::future::Future;

use openraft::OptionalSend;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;

use super::{CommittedLeaderId, Node, NodeId, TypeConfig, Vote};

/// A network factory for a single-member cluster.
pub struct SingleNodeNetwork<E>(PhantomData<fn() -> E>);

impl<E> Default for SingleNodeNetwork<E> {
    fn default() -> Self {
        SingleNodeNetwork(PhantomData)
    }
}

impl<E> fmt::Debug for SingleNodeNetwork<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SingleNodeNetwork")
    }
}

/// The connection to a node that cannot be reached.
#[derive(Debug)]
pub struct NoConnection<E> {
    target: NodeId,
    _runtime: PhantomData<fn() -> E>,
}

impl<E: Env> RaftNetworkFactory<TypeConfig<E>> for SingleNodeNetwork<E> {
    type Network = NoConnection<E>;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Self::Network {
        NoConnection {
            target,
            _runtime: PhantomData,
        }
    }
}

impl<E: Env> NoConnection<E> {
    fn message(&self) -> String {
        format!(
            "node {} is not reachable: this bus runs without a network transport; \
             start it as a cluster node to add members",
            self.target
        )
    }

    fn unreachable(&self) -> RPCError<TypeConfig<E>> {
        RPCError::Unreachable(Unreachable::from_string(self.message()))
    }
}

impl<E: Env> RaftNetworkV2<TypeConfig<E>> for NoConnection<E> {
    type SnapshotData = crate::raft::SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig<E>>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig<E>>, RPCError<TypeConfig<E>>> {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig<E>>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig<E>>, RPCError<TypeConfig<E>>> {
        Err(self.unreachable())
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot<CommittedLeaderId, NodeId, Node, crate::raft::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig<E>>, StreamingError<TypeConfig<E>>> {
        Err(StreamingError::Unreachable(Unreachable::from_string(
            self.message(),
        )))
    }
}
