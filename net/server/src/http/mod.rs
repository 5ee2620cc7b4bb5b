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
//! A node with TLS material (`--tls-dir`) serves HTTPS only, with the
//! same certificates and reloads as its client port; a client certificate
//! is optional, and names the principal when no token does.
//!
//! The audit API is under the audit ACLs ([`auth`]): a bearer token
//! (`Authorization: Bearer sluice-token.…`) or else the client certificate
//! names the principal, no credentials is `Anonymous`; superusers pass, anyone else needs a rule
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

use axum::Extension;
use axum::Router;
use axum::routing::{delete, get};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

use sluice_audit::KeyPair;
use sluice_client::tls::{Tls, principal_of};
use sluice_core::bus::Bus;
use sluice_model::constants::{ACCEPT_RETRY_DELAY, AUTH_TIMEOUT};
use sluice_model::security::Principal;

use auth::CertificatePrincipal;

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
    /// The node's TLS material: HTTPS only, when it has some.
    pub(crate) tls: Option<Arc<Tls>>,
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
    let tls = state.tls.clone();
    let router = Router::new()
        .route("/metrics", get(metrics::get))
        .route("/api/audit/export", get(audit::export))
        .route("/api/subjects/{id}", delete(audit::erase))
        .with_state(state);
    tokio::spawn(async move {
        match tls {
            Some(tls) => serve_tls(listener, router, tls).await,
            None => {
                if let Err(error) = axum::serve(listener, router).await {
                    warn!(%error, "the HTTP listener stopped");
                }
            }
        }
    })
}

/// HTTPS: each connection's handshake uses the material current when it
/// is accepted (so a reload applies to the next connection), and a
/// verified client certificate's principal rides on its requests.
async fn serve_tls(listener: TcpListener, router: Router, tls: Arc<Tls>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause, go on.
                warn!(%error, "the HTTPS listener could not accept a connection");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let Some(config) = tls.server_config() else {
            warn!("the HTTPS listener has no certificate of its own; it stops");
            return;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let handshake = TlsAcceptor::from(config).accept(stream);
            let stream = match tokio::time::timeout(AUTH_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    warn!(%peer, %error, "an HTTPS handshake failed");
                    return;
                }
                Err(_) => {
                    warn!(%peer, "an HTTPS handshake did not finish in time");
                    return;
                }
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(principal_of);
            let router = match certificate {
                None => router,
                Some(Ok(principal)) => router.layer(Extension(CertificatePrincipal(principal))),
                Some(Err(reason)) => {
                    warn!(%peer, %reason, "an HTTPS client certificate names no principal");
                    return;
                }
            };
            let service = TowerToHyperService::new(router);
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "an HTTPS connection ended with an error");
            }
        });
    }
}
