//! Audit: what regulated readers and auditors get from the bus (mission
//! requirements 12 to 14).
//!
//! - [`keys`]: SM2 (GB/T 32918) key pairs with a distinguishing id, PEM
//!   files, signing and verification;
//! - [`checkpoint`]: signed checkpoints of the log's hash chain head (the
//!   chain itself is computed by the log, `log/FORMAT.md`), proposed by the
//!   bus through Raft (`Bus::checkpoint`, `Bus::start_checkpoints`);
//! - [`verify`](mod@verify): the offline verifier of a data directory, behind
//!   `sluice verify`;
//! - [`signing`]: optional producer signatures on events;
//! - [`erasure`]: signed erasure tombstones for a subject;
//! - [`export`](mod@export): the audit export by subject and time range;
//! - [`masking`]: field-level masking of payloads at read time by the
//!   reader's clearance.
//!
//! Invariant shared by everything here: audit reads never modify the stored
//! log. Masking works on a parsed copy of a payload, so a stored record
//! keeps its bytes, its checksum and its place in the hash chain.

pub mod checkpoint;
pub mod erasure;
pub mod export;
pub mod keys;
pub mod masking;
pub mod signing;
pub mod verify;

pub use checkpoint::{Checkpoint, CheckpointPolicy};
pub use erasure::Erasure;
pub use export::{ExportError, ExportQuery, ExportSummary, export, export_disk};
pub use keys::{KeyError, KeyPair};
pub use masking::{Clearance, Mask, MaskError, MaskingPolicy, PolicyError, Rule};
pub use verify::{Finding, FindingReason, Report, VerifyError, VerifyOptions, verify, verify_disk};
