//! The signed summary that ends an online audit export: which node
//! exported what, up to which log index and chain hash, and the SHA-256 of
//! every line before it, signed with the node's SM2 key. Whoever holds the
//! export and trusts the node's public key can check that no line was
//! added, removed or changed since the node wrote it.
//!
//! Signed message: `"sluice export summary v1\0"`, then the node id, log
//! index, `from_ms`, `to_ms`, event count and `exported_ms` (each u64 LE),
//! the chain hash at the index and the lines' SHA-256 (32 bytes each), the
//! directory-verified flag (one byte), then the subject and the first
//! finding (each as u32 LE length and UTF-8 bytes; no finding is empty).
//!
//! The summary line is one JSON object:
//! `{"summary": {...the fields...}, "signature": {"signer", "distid",
//! "public_key", "sm2"} | null}` (hex for bytes; `null` when the node has
//! no signing key).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::keys::{self, KeyError, KeyPair};
use sluice_model::records::Hash;

const SUMMARY_DOMAIN: &[u8] = b"sluice export summary v1\0";

/// What the summary states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportStatement {
    /// The node that exported.
    pub node: u64,
    /// The subject.
    pub subject: String,
    /// The query's time range, ms since the epoch, inclusive.
    pub from_ms: u64,
    /// See `from_ms`.
    pub to_ms: u64,
    /// Events (lines) exported.
    pub events: u64,
    /// The last log index read (what the node had applied).
    pub index: u64,
    /// The chain hash at `index`.
    pub chain_head: Hash,
    /// Whether the directory verified up to `index`.
    pub directory_verified: bool,
    /// The verifier's first finding, if any.
    pub first_finding: Option<String>,
    /// When the node exported (its wall clock), ms since the epoch.
    pub exported_ms: u64,
    /// SHA-256 of every byte of the export before the summary line.
    pub lines_sha256: Hash,
}

impl ExportStatement {
    /// The bytes that are signed; see the module docs.
    pub fn message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(SUMMARY_DOMAIN);
        for number in [
            self.node,
            self.index,
            self.from_ms,
            self.to_ms,
            self.events,
            self.exported_ms,
        ] {
            out.extend_from_slice(&number.to_le_bytes());
        }
        out.extend_from_slice(&self.chain_head);
        out.extend_from_slice(&self.lines_sha256);
        out.push(u8::from(self.directory_verified));
        let finding = self.first_finding.as_deref().unwrap_or("");
        for text in [self.subject.as_str(), finding] {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    /// The summary line (without its newline), signed with `key` if given.
    pub fn line(&self, key: Option<&KeyPair>) -> Value {
        let summary = json!({
            "node": self.node,
            "subject": self.subject,
            "from_ms": self.from_ms,
            "to_ms": self.to_ms,
            "events": self.events,
            "index": self.index,
            "chain_head": hex(&self.chain_head),
            "directory_verified": self.directory_verified,
            "first_finding": self.first_finding,
            "exported_ms": self.exported_ms,
            "lines_sha256": hex(&self.lines_sha256),
        });
        let signature = key.map(|key| {
            json!({
                "signer": keys::fingerprint(&key.public_key()),
                "distid": key.distid(),
                "public_key": hex(&key.public_key()),
                "sm2": hex(&key.sign(&self.message())),
            })
        });
        json!({ "summary": summary, "signature": signature })
    }

    /// Reads a summary line's statement back.
    pub fn from_line(line: &Value) -> Result<ExportStatement, SummaryError> {
        let summary = &line["summary"];
        let number = |name: &'static str| summary[name].as_u64().ok_or(SummaryError::Field(name));
        let hash = |name: &'static str| {
            summary[name]
                .as_str()
                .and_then(unhex)
                .and_then(|bytes| Hash::try_from(bytes).ok())
                .ok_or(SummaryError::Field(name))
        };
        Ok(ExportStatement {
            node: number("node")?,
            subject: summary["subject"]
                .as_str()
                .ok_or(SummaryError::Field("subject"))?
                .to_owned(),
            from_ms: number("from_ms")?,
            to_ms: number("to_ms")?,
            events: number("events")?,
            index: number("index")?,
            chain_head: hash("chain_head")?,
            directory_verified: summary["directory_verified"]
                .as_bool()
                .ok_or(SummaryError::Field("directory_verified"))?,
            first_finding: match &summary["first_finding"] {
                Value::Null => None,
                Value::String(finding) => Some(finding.clone()),
                _ => return Err(SummaryError::Field("first_finding")),
            },
            exported_ms: number("exported_ms")?,
            lines_sha256: hash("lines_sha256")?,
        })
    }
}

/// A summary whose signature and lines checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSummary {
    /// What it states.
    pub statement: ExportStatement,
    /// The signer's public key (SEC1), for the caller to compare with the
    /// keys it trusts.
    pub public_key: Vec<u8>,
}

/// Why a summary did not check out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SummaryError {
    /// The export does not end with a summary line.
    #[error("the export does not end with a summary line")]
    Missing,
    /// A field is missing or malformed.
    #[error("the summary's {0:?} is missing or malformed")]
    Field(&'static str),
    /// The node had no signing key.
    #[error("the summary is not signed (the node has no --signing-key)")]
    Unsigned,
    /// The lines before the summary are not the ones it signs.
    #[error(
        "the lines before the summary hash to {computed}, but it signs {signed}: lines were \
         added, removed or changed"
    )]
    Lines {
        /// What the summary states.
        signed: String,
        /// What the lines hash to.
        computed: String,
    },
    /// The signature does not verify.
    #[error(transparent)]
    Signature(#[from] KeyError),
}

/// Checks a whole online export: its last line is a summary whose
/// signature verifies and which signs the SHA-256 of every byte before
/// it. Returns the statement and the signer's key.
pub fn check_export(export: &[u8]) -> Result<CheckedSummary, SummaryError> {
    let body = export.strip_suffix(b"\n").unwrap_or(export);
    let start = body
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    check_summary(Sha256::digest(&export[..start]).into(), &body[start..])
}

/// Checks a summary line against `lines_sha256`, the SHA-256 of every
/// byte of the export before it (for a reader that hashes as it streams).
pub fn check_summary(lines_sha256: Hash, line: &[u8]) -> Result<CheckedSummary, SummaryError> {
    let line: Value = serde_json::from_slice(line).map_err(|_| SummaryError::Missing)?;
    if line.get("summary").is_none() {
        return Err(SummaryError::Missing);
    }
    let statement = ExportStatement::from_line(&line)?;
    if lines_sha256 != statement.lines_sha256 {
        return Err(SummaryError::Lines {
            signed: hex(&statement.lines_sha256),
            computed: hex(&lines_sha256),
        });
    }
    let signature = &line["signature"];
    if signature.is_null() {
        return Err(SummaryError::Unsigned);
    }
    let field = |name: &'static str| {
        signature[name]
            .as_str()
            .ok_or(SummaryError::Field(name))
            .map(str::to_owned)
    };
    let public_key = unhex(&field("public_key")?).ok_or(SummaryError::Field("public_key"))?;
    let sm2 = unhex(&field("sm2")?).ok_or(SummaryError::Field("sm2"))?;
    keys::verify(&public_key, &field("distid")?, &statement.message(), &sm2)?;
    Ok(CheckedSummary {
        statement,
        public_key,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(lines: &[u8]) -> ExportStatement {
        ExportStatement {
            node: 2,
            subject: "alice".into(),
            from_ms: 0,
            to_ms: u64::MAX,
            events: 1,
            index: 41,
            chain_head: [7; 32],
            directory_verified: true,
            first_finding: None,
            exported_ms: 1_700_000_000_000,
            lines_sha256: Sha256::digest(lines).into(),
        }
    }

    fn export(lines: &[u8], key: Option<&KeyPair>) -> Vec<u8> {
        let mut out = lines.to_vec();
        out.extend_from_slice(statement(lines).line(key).to_string().as_bytes());
        out.push(b'\n');
        out
    }

    #[test]
    fn a_signed_export_checks_and_any_change_is_caught() {
        let key = KeyPair::generate(keys::DISTID_DEFAULT).unwrap();
        let lines = b"{\"subject\":\"alice\"}\n";
        let whole = export(lines, Some(&key));
        let checked = check_export(&whole).unwrap();
        assert_eq!(checked.statement, statement(lines));
        assert_eq!(checked.public_key, key.public_key());

        // A line changed.
        let mut changed = whole.clone();
        changed[3] ^= 1;
        assert!(matches!(
            check_export(&changed),
            Err(SummaryError::Lines { .. })
        ));
        // A stated field changed (and the lines' hash kept).
        let text = String::from_utf8(whole.clone()).unwrap();
        let forged = text.replace("\"events\":1", "\"events\":2");
        assert_ne!(forged, text);
        assert!(matches!(
            check_export(forged.as_bytes()),
            Err(SummaryError::Signature(_))
        ));
        // No summary, no signature.
        assert!(matches!(check_export(lines), Err(SummaryError::Missing)));
        assert!(matches!(
            check_export(&export(lines, None)),
            Err(SummaryError::Unsigned)
        ));
    }
}
