//! The network of a one-member cluster: there is nobody to talk to.
//!
//! An embedded bus is a single-member Raft cluster; adding members later is
//! a membership change that needs a real transport (the network crate).
//! Until one is configured, every attempt to reach another node fails with
//! `Unreachable`, naming what to do.

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
use openraft_rt::AsyncRuntime;

use super::{CommittedLeaderId, Node, NodeId, TypeConfig, Vote};

/// A network factory for a single-member cluster.
pub struct SingleNodeNetwork<RT>(PhantomData<fn() -> RT>);

impl<RT> Default for SingleNodeNetwork<RT> {
    fn default() -> Self {
        SingleNodeNetwork(PhantomData)
    }
}

impl<RT> fmt::Debug for SingleNodeNetwork<RT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SingleNodeNetwork")
    }
}

/// The connection to a node that cannot be reached.
#[derive(Debug)]
pub struct NoConnection<RT> {
    target: NodeId,
    _runtime: PhantomData<fn() -> RT>,
}

impl<RT: AsyncRuntime> RaftNetworkFactory<TypeConfig<RT>> for SingleNodeNetwork<RT> {
    type Network = NoConnection<RT>;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Self::Network {
        NoConnection {
            target,
            _runtime: PhantomData,
        }
    }
}

impl<RT: AsyncRuntime> NoConnection<RT> {
    fn message(&self) -> String {
        format!(
            "node {} is not reachable: this bus runs without a network transport; \
             start it as a cluster node to add members",
            self.target
        )
    }

    fn unreachable(&self) -> RPCError<TypeConfig<RT>> {
        RPCError::Unreachable(Unreachable::from_string(self.message()))
    }
}

impl<RT: AsyncRuntime> RaftNetworkV2<TypeConfig<RT>> for NoConnection<RT> {
    type SnapshotData = crate::raft::SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig<RT>>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig<RT>>, RPCError<TypeConfig<RT>>> {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig<RT>>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig<RT>>, RPCError<TypeConfig<RT>>> {
        Err(self.unreachable())
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot<CommittedLeaderId, NodeId, Node, crate::raft::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig<RT>>, StreamingError<TypeConfig<RT>>> {
        Err(StreamingError::Unreachable(Unreachable::from_string(
            self.message(),
        )))
    }
}
