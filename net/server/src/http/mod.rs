//! The node's HTTP listener (`sluice node --http-listen ADDR`), on axum:
//!
//! - `GET /metrics`: the bus's, the connections' and the chain check's
//!   metrics in the Prometheus text format (version 0.0.4), from one
//!   `prometheus-client` registry ([`metrics`]);
//! - `GET /api/audit/export?subject=…&from=…&to=…`: a subject's events
//!   with their histories as JSON lines, read from the live data
//!   directory, ending with a summary signed with the node's SM2 key
//!   ([`audit`]);
//! - `DELETE /api/subjects/{id}?reason=…`: commits a signed erasure of
//!   the subject and answers with its record ([`audit`]).
//!
//! The audit API is under the audit ACLs ([`auth`]): a bearer token
//! (`Authorization: Bearer sluice-token.…`) names the principal, no
//! credentials is `Anonymous`; superusers pass, anyone else needs a rule
//! allowing `audit-export` or `erase` on `audit`. Refusals are 401 (who
//! are you?) or 403 (not you), with a JSON body naming the principal, the
//! operation and the resource.

pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod metrics;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::warn;

use sluice_audit::KeyPair;
use sluice_core::bus::Bus;
use sluice_model::security::Principal;

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct HttpState {
    pub(crate) bus: Bus,
    /// The metrics every scrape encodes.
    pub(crate) registry: Registry,
    /// The node's data directory, read (never written) by exports.
    pub(crate) data_dir: PathBuf,
    /// Signs export summaries and erasures.
    pub(crate) signing_key: Option<Arc<KeyPair>>,
    /// Principals that pass every check.
    pub(crate) superusers: Vec<Principal>,
}

/// Binds `address` for [`serve`].
pub(crate) async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot listen for HTTP on {address}: {error}"),
        )
    })
}

/// Serves the routes on `listener` until the task is aborted.
pub(crate) fn serve(listener: TcpListener, state: Arc<HttpState>) -> JoinHandle<()> {
    let router = Router::new()
        .route("/metrics", get(metrics::get))
        .route("/api/audit/export", get(audit::export))
        .route("/api/subjects/{id}", delete(audit::erase))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            warn!(%error, "the HTTP listener stopped");
        }
    })
}
