//! The audit API: a subject's export, read online, and its erasure.
//!
//! `GET /api/audit/export?subject=S&from=T&to=T` runs the offline export
//! (`sluice_audit::export`) on the node's live data directory, opened read
//! only beside the node and read up to the index the node had applied when
//! the request came (the frames it appends meanwhile are left alone). The
//! lines are the ones `sluice audit export --dir` writes for the same
//! records; the last line is an [`ExportStatement`] signed with the node's
//! key (`sluice_audit::summary`). The export verifies the directory and
//! replays the log before its first line, so a failure there is answered
//! with a status; one after the first line cuts the response short, and
//! such an export has no summary.
//!
//! `DELETE /api/subjects/{id}?reason=R` signs an erasure of the subject
//! with the node's key and commits it as an admin entry naming the
//! principal; it is answered once applied, so later reads mask the
//! subject. Only the leader commits: another node answers 421 naming the
//! leader.

use std::io::Write;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use sluice_audit::export::parse_time_ms;
use sluice_audit::summary::ExportStatement;
use sluice_audit::{ExportQuery, VerifyOptions, export_disk_until, keys};
use sluice_core::bus::{BusError, Signer as _};
use sluice_core::io::os::OsDisk;
use sluice_core::io::wall_unix_ms;
use sluice_model::constants::{EXPORT_CHUNK_SIZE, EXPORT_CHUNKS_IN_FLIGHT_MAX};
use sluice_model::security::Operation;
use sluice_model::state::{AdminAction, Op, Response as StateResponse};

use super::HttpState;
use super::auth::{CertificatePrincipal, authorize};

/// The export's query string.
#[derive(Debug, Deserialize)]
pub(crate) struct ExportParams {
    subject: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

impl ExportParams {
    fn query(self) -> Result<ExportQuery, String> {
        let subject = self
            .subject
            .filter(|subject| !subject.is_empty())
            .ok_or("name the subject: ?subject=…")?;
        let time = |text: Option<String>, default: u64| {
            text.map_or(Ok(default), |text| parse_time_ms(&text))
        };
        Ok(ExportQuery {
            subject,
            from_ms: time(self.from, 0)?,
            to_ms: time(self.to, u64::MAX)?,
        })
    }
}

/// A chunk of the export, or why it stopped.
type Chunk = Result<Bytes, String>;

pub(crate) async fn export(
    State(state): State<Arc<HttpState>>,
    certificate: Option<Extension<CertificatePrincipal>>,
    headers: HeaderMap,
    Query(params): Query<ExportParams>,
) -> Response {
    let certificate = certificate.map(|Extension(principal)| principal);
    if let Err(refusal) = authorize(&state, certificate, &headers, Operation::AuditExport) {
        return refusal.into_response();
    }
    let query = match params.query() {
        Ok(query) => query,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let (index, chain_head) = match state.bus.applied_chain_head() {
        Ok(head) => head,
        Err(failure) => {
            let message = format!("this node has no applied log to export yet: {failure}");
            return error(StatusCode::SERVICE_UNAVAILABLE, message);
        }
    };
    let (sender, mut receiver) = mpsc::channel::<Chunk>(EXPORT_CHUNKS_IN_FLIGHT_MAX);
    let statement = ExportStatement {
        node: state.bus.node_id(),
        subject: query.subject.clone(),
        from_ms: query.from_ms,
        to_ms: query.to_ms,
        events: 0,
        index,
        chain_head,
        directory_verified: false,
        first_finding: None,
        exported_ms: wall_unix_ms(&**state.bus.clock()),
        lines_sha256: [0; 32],
    };
    let exporting = Arc::clone(&state);
    tokio::task::spawn_blocking(move || {
        let mut out = Chunks::new(sender.clone());
        if let Err(failure) = run_export(&exporting, &query, statement, &mut out) {
            let _ = sender.blocking_send(Err(failure));
        }
    });
    // The first chunk decides the status: everything that can fail before
    // a line is written (the directory, the verification, the replay) has
    // been done by then.
    match receiver.recv().await {
        Some(Ok(first)) => {
            let rest = futures_util::stream::unfold(receiver, |mut receiver| async move {
                let chunk = receiver.recv().await?;
                Some((chunk.map_err(std::io::Error::other), receiver))
            });
            let stream = futures_util::StreamExt::chain(
                futures_util::stream::once(async move { Ok(first) }),
                rest,
            );
            (
                [(header::CONTENT_TYPE, "application/x-ndjson")],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Some(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the export stopped without an answer".to_owned(),
        ),
    }
}

/// Exports into `out`, then writes the signed summary.
fn run_export(
    state: &HttpState,
    query: &ExportQuery,
    mut statement: ExportStatement,
    out: &mut Chunks,
) -> Result<(), String> {
    let dir = &state.data_dir;
    let disk = OsDisk::open_read_only(dir).map_err(|failure| {
        format!(
            "cannot read the data directory {}: {failure}",
            dir.display()
        )
    })?;
    let options = VerifyOptions::default();
    let summary = export_disk_until(&disk, query, &options, Some(statement.index), out)
        .map_err(|failure| failure.to_string())?;
    statement.events = summary.events;
    statement.directory_verified = summary.directory_verified;
    statement.first_finding = summary.first_finding;
    statement.lines_sha256 = out.hasher.clone().finalize().into();
    let line = statement.line(state.signing_key.as_deref());
    let written = serde_json::to_writer(&mut *out, &line)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    written.map_err(|failure| format!("cannot send the export: {failure}"))
}

/// A writer that hashes everything written and sends it on in chunks of
/// [`EXPORT_CHUNK_SIZE`]; the channel's bound holds the export back while
/// the client reads slowly.
struct Chunks {
    sender: mpsc::Sender<Chunk>,
    buffer: Vec<u8>,
    hasher: Sha256,
}

impl Chunks {
    fn new(sender: mpsc::Sender<Chunk>) -> Chunks {
        Chunks {
            sender,
            buffer: Vec::with_capacity(EXPORT_CHUNK_SIZE),
            hasher: Sha256::new(),
        }
    }
}

impl Write for Chunks {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(bytes);
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= EXPORT_CHUNK_SIZE {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.sender.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client stopped reading the export",
            )
        })
    }
}

/// The erasure's query string.
#[derive(Debug, Deserialize)]
pub(crate) struct EraseParams {
    reason: Option<String>,
}

pub(crate) async fn erase(
    State(state): State<Arc<HttpState>>,
    certificate: Option<Extension<CertificatePrincipal>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    Query(params): Query<EraseParams>,
) -> Response {
    let certificate = certificate.map(|Extension(principal)| principal);
    let principal = match authorize(&state, certificate, &headers, Operation::Erase) {
        Ok(principal) => principal,
        Err(refusal) => return refusal.into_response(),
    };
    if subject.is_empty() {
        return error(StatusCode::BAD_REQUEST, "name the subject".to_owned());
    }
    let Some(key) = &state.signing_key else {
        let message = "this node has no signing key to sign the erasure with; start it with \
                       --signing-key PEM (made by `sluice keys gen`)";
        return error(StatusCode::CONFLICT, message.to_owned());
    };
    let reason = params.reason.unwrap_or_default();
    let now_ms = wall_unix_ms(&**state.bus.clock());
    let erasure = key.sign_erasure(&subject, &reason, now_ms);
    let op = Op::Admin {
        principal: principal.clone(),
        action: AdminAction::Apply(Box::new(Op::Erase(erasure.clone()))),
    };
    match state.bus.propose(op).await {
        Ok(StateResponse::Ok) => {
            let record = json!({
                "subject": erasure.subject,
                "reason": erasure.reason,
                "requested_ms": erasure.requested_ms,
                "principal": principal.to_string(),
                "distid": erasure.distid,
                "signer": keys::fingerprint(&erasure.public_key),
                "public_key": hex(&erasure.public_key),
                "signature": hex(&erasure.signature),
            });
            (StatusCode::OK, Json(record)).into_response()
        }
        Ok(StateResponse::Error(refused)) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, refused.to_string())
        }
        Ok(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the erasure was answered {other:?}"),
        ),
        Err(BusError::NotLeader {
            leader_id,
            leader_address,
        }) => {
            let body = json!({
                "error": "this node does not lead; send the erasure to the leader",
                "leader": leader_id.map(|id| json!({ "id": id, "address": leader_address })),
            });
            (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response()
        }
        Err(failure) => error(StatusCode::SERVICE_UNAVAILABLE, failure.to_string()),
    }
}

/// A JSON error body.
fn error(status: StatusCode, message: String) -> Response {
    let body: Value = json!({ "error": message });
    (status, Json(body)).into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
