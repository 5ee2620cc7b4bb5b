//! The node's gRPC API, package `sluice.v1` (the contract is
//! `proto/sluice/v1/*.proto`, documented in `PROTOCOL.md`): the
//! `Publisher` (idempotent producer sessions, batches deduplicated by
//! their producer stamps exactly as the native protocol's are) and
//! `Admin` (topics, cluster status) services, beside the standard
//! `grpc.health.v1.Health` and server reflection.
//!
//! Every call is authorized like a native request: the caller's
//! principal (a bearer token in the `authorization` metadata, or
//! `Anonymous`) is admitted as the native request the call amounts to:
//! the same quotas, superusers and access map (`auth`).
//!
//! - `auth`: the principal of a call and the access check.
//! - `convert`: events between the wire messages and the model.
//! - `status`: engine errors as gRPC status codes.
//! - `publisher`, `admin`: the services.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_client::protocol::ClientRequest;
use sluice_server::quota::Quotas;

use sluice_core::bus::Bus;
use sluice_model::constants::FRAME_SIZE_MAX;
use sluice_model::security::Principal;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

mod admin;
mod auth;
mod convert;
mod publisher;
mod status;

/// The messages and services generated from `proto/sluice/v1/*.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    tonic::include_proto!("sluice.v1");

    /// The encoded descriptors of the `sluice.v1` files, which server
    /// reflection serves.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sluice_v1_descriptor.bin"));
}

pub use convert::{HEADER_BUSINESS_ID, HEADER_DEADLINE_MS, HEADER_SLA_CLASS};

/// What the gRPC services need from the node.
#[derive(Clone)]
pub struct GrpcConfig {
    /// The node's bus: its state, Raft handle and batcher.
    pub bus: Bus,
    /// Principals allowed everything (`NodeConfig::superusers`).
    pub superusers: Vec<Principal>,
    /// The principals' quota buckets for calls on this listener.
    pub quotas: Arc<Quotas>,
}

impl GrpcConfig {
    /// The services of `bus`, with `superusers`, and quota buckets of
    /// their own.
    pub fn new(bus: Bus, superusers: Vec<Principal>) -> GrpcConfig {
        GrpcConfig {
            bus,
            superusers,
            quotas: Arc::new(Quotas::default()),
        }
    }

    /// The caller's principal, admitted for `request` (what the call
    /// amounts to natively) of `size` bytes.
    pub(crate) fn admit<T>(
        &self,
        call: &tonic::Request<T>,
        request: &ClientRequest,
        size: usize,
    ) -> Result<Principal, tonic::Status> {
        let state = self.bus.state();
        let principal = auth::principal(state.security(), call.metadata())?;
        auth::admit(
            &state,
            &self.superusers,
            &self.quotas,
            &principal,
            request,
            size,
        )?;
        Ok(principal)
    }
}

impl std::fmt::Debug for GrpcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcConfig")
            .field("node", &self.bus.node_id())
            .field("superusers", &self.superusers)
            .finish_non_exhaustive()
    }
}

/// Why the gRPC listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The address could not be bound.
    #[error("cannot serve gRPC on {address}: {source}; choose a free address for --grpc-listen")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not read the descriptors.
    #[error("the gRPC reflection service did not start: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running gRPC listener; stops when dropped or aborted.
#[derive(Debug)]
pub struct GrpcServer {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl GrpcServer {
    /// Where it listens.
    pub fn local_address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving (calls in progress are dropped).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `sluice.v1.Publisher`, `sluice.v1.Admin`, `grpc.health.v1.Health`
/// and reflection on `address`. Must run inside a tokio runtime.
pub async fn serve(address: SocketAddr, config: GrpcConfig) -> Result<GrpcServer, GrpcError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| GrpcError::Bind { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| GrpcError::Bind { address, source })?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::publisher_server::PublisherServer<publisher::PublisherService>>()
        .await;
    health_reporter
        .set_serving::<proto::admin_server::AdminServer<admin::AdminService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let shared = Arc::new(config);
    let publisher = proto::publisher_server::PublisherServer::new(publisher::PublisherService {
        config: shared.clone(),
    })
    .max_decoding_message_size(FRAME_SIZE_MAX)
    .max_encoding_message_size(FRAME_SIZE_MAX);
    let admin = proto::admin_server::AdminServer::new(admin::AdminService { config: shared });
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(publisher)
        .add_service(admin);
    let incoming = TcpIncoming::from(listener);
    let task = tokio::spawn(async move {
        if let Err(error) = router.serve_with_incoming(incoming).await {
            warn!(%error, "the gRPC listener stopped");
        }
    });
    info!(address = %bound, "serving gRPC");
    Ok(GrpcServer {
        address: bound,
        task,
    })
}
