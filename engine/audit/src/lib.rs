//! Audit: what regulated readers and auditors get from the bus: tamper
//! evidence, subject export, erasure and field-level masking.
//!
//! - [`keys`]: SM2 (GB/T 32918) key pairs with a distinguishing id, PEM
//!   files, signing and verification;
//! - [`checkpoint`]: signed checkpoints of the log's hash chain head (the
//!   chain itself is computed by the log, `engine/core/src/log/FORMAT.md`),
//!   proposed by the bus through Raft (`Bus::checkpoint`,
//!   `Bus::start_checkpoints`);
//! - [`verify`](mod@verify): the offline verifier of a data directory, behind
//!   `sluice verify`;
//! - [`signing`]: optional producer signatures on events;
//! - [`erasure`]: signed erasure tombstones for a subject;
//! - [`export`](mod@export): the audit export by subject and time range;
//! - [`summary`]: the signed summary that ends a node's online export;
//! - [`admin`]: the admin trail export (who changed what, and when);
//! - [`masking`]: field-level masking of payloads at read time by the
//!   reader's clearance.
//!
//! Invariant shared by everything here: audit reads never modify the stored
//! log. Masking works on a parsed copy of a payload, so a stored record
//! keeps its bytes, its checksum and its place in the hash chain.

pub mod admin;
pub mod checkpoint;
pub mod erasure;
pub mod export;
pub mod keys;
pub mod masking;
pub mod signing;
pub mod summary;
pub mod verify;

pub use admin::{export_admin, export_admin_disk};
pub use checkpoint::Checkpoint;
pub use erasure::Erasure;
pub use export::{ExportError, ExportQuery, ExportSummary, export, export_disk, export_disk_until};
pub use keys::{KeyError, KeyPair};
pub use masking::{Clearance, Mask, MaskError, MaskingPolicy, PolicyError, Rule};
pub use verify::{
    Finding, FindingReason, Report, VerifyError, VerifyOptions, verify, verify_disk,
    verify_disk_until,
};

use sluice_core::bus::{SignatureCheck, SignatureRefused, Signer};
use sluice_model::records::{Hash, SignedParts};

/// Checks the signature of an audit record (a checkpoint or an erasure).
pub trait VerifySignature {
    /// `Ok` when the record's signature verifies under its own key and id.
    fn verify_signature(&self) -> Result<(), KeyError>;
}

impl Signer for KeyPair {
    fn sign_checkpoint(&self, index: u64, head: Hash) -> Checkpoint {
        checkpoint::sign(self, index, head)
    }

    fn sign_erasure(&self, subject: &str, reason: &str, requested_ms: u64) -> Erasure {
        erasure::sign(self, subject, reason, requested_ms)
    }
}

/// SM2 verification of producer signatures and erasure requests, for
/// `BusConfig::signatures`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sm2Signatures;

impl SignatureCheck for Sm2Signatures {
    fn check_event(&self, parts: &SignedParts<'_>) -> Result<(), SignatureRefused> {
        signing::check(parts)
            .map(drop)
            .map_err(|error| SignatureRefused(Box::new(error)))
    }

    fn check_erasure(&self, erasure: &Erasure) -> Result<(), SignatureRefused> {
        erasure
            .verify_signature()
            .map_err(|error| SignatureRefused(Box::new(error)))
    }
}
