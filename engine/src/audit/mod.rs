//! Audit: what regulated readers and auditors get from the bus (mission
//! requirements 13 and 14).
//!
//! This module is meant to hold three things: field-level masking of
//! payloads at read time by the reader's clearance, the export of the audit
//! trail by subject and time range, and signed records of deletion
//! requests. Today it holds only the first, [`masking`].
//!
//! Invariant shared by everything here: audit reads never modify the stored
//! log. Masking works on a parsed copy of a payload, so a stored record
//! keeps its bytes, its checksum and its place in the hash chain.

pub mod masking;

pub use masking::{Clearance, Mask, MaskError, MaskingPolicy, PolicyError, Rule};
