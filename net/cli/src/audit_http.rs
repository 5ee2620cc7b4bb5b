//! `sluice audit export|erase --cluster ADDRS`: the audit API of running
//! nodes (`GET /api/audit/export`, `DELETE /api/subjects/{id}` on their
//! `--http-listen` address), tried in the order given.
//!
//! An export is written as it arrives; its last line, the node's signed
//! summary, is checked against the SHA-256 of every line before it and
//! against the keys passed with `--trust`. An erasure goes to the first
//! node that commits it: a node that does not lead (421), has no signing
//! key (409) or does not answer passes it on to the next address.

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::Agent;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

use sluice_client::tls::{TlsFiles, provider};

use sluice_audit::keys;
use sluice_audit::summary::{self, CheckedSummary};

/// How the API is reached.
pub(crate) struct Api {
    addresses: Vec<String>,
    token: Option<String>,
    agent: Agent,
    /// `https` with TLS material, else `http`.
    scheme: &'static str,
}

impl Api {
    /// The nodes at `addresses` (HOST:PORT, comma-separated), with a
    /// bearer token if given; each request may take `timeout`. With a TLS
    /// directory (`sluice certs`), over HTTPS: the nodes' certificates
    /// must chain to its `ca.pem`, and its client certificate, if any, is
    /// presented.
    pub(crate) fn new(
        addresses: &str,
        token: Option<String>,
        timeout: Duration,
        tls_dir: Option<&Path>,
    ) -> Result<Api, Box<dyn Error>> {
        let addresses = addresses
            .split(',')
            .map(str::trim)
            .filter(|address| !address.is_empty())
            .map(str::to_owned)
            .collect();
        let mut config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(timeout));
        let mut scheme = "http";
        if let Some(dir) = tls_dir {
            config = config.tls_config(tls_config(dir)?);
            scheme = "https";
        }
        Ok(Api {
            addresses,
            token,
            agent: config.build().into(),
            scheme,
        })
    }

    fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|token| format!("Bearer {token}"))
    }

    /// Streams the export of `subject` in `[from, to]` into `out`; checks
    /// its summary. Exit code 0 when the summary verifies, is signed by a
    /// trusted key (if any are given) and the node's directory verified.
    pub(crate) fn export(
        &self,
        query: [(&str, String); 3],
        trusted: &[Vec<u8>],
        out: &mut dyn Write,
    ) -> Result<ExitCode, Box<dyn Error>> {
        let mut failures = Vec::new();
        for address in &self.addresses {
            let scheme = self.scheme;
            let mut request = self
                .agent
                .get(format!("{scheme}://{address}/api/audit/export"));
            for (name, value) in &query {
                request = request.query(name, value);
            }
            if let Some(value) = self.authorization() {
                request = request.header("Authorization", value);
            }
            let response = match request.call() {
                Ok(response) => response,
                Err(error) => {
                    failures.push(format!("{address}: {error}"));
                    continue;
                }
            };
            let status = response.status().as_u16();
            if status != 200 {
                let body = response.into_body().read_to_string().unwrap_or_default();
                let failure = format!("{address} answered {status}: {}", body.trim());
                if matches!(status, 401 | 403 | 400) {
                    return Err(failure.into());
                }
                failures.push(failure);
                continue;
            }
            let reader = BufReader::new(response.into_body().into_reader());
            let checked = copy_and_check(reader, out)?;
            return Ok(report_export(address, &checked, trusted));
        }
        Err(format!("no node exported: {}", failures.join("; ")).into())
    }

    /// Erases `subject`; prints the erasure record.
    pub(crate) fn erase(&self, subject: &str, reason: &str) -> Result<ExitCode, Box<dyn Error>> {
        let mut failures = Vec::new();
        for address in &self.addresses {
            let url = format!(
                "{}://{address}/api/subjects/{}",
                self.scheme,
                path_segment(subject)
            );
            let mut request = self.agent.delete(url).query("reason", reason);
            if let Some(value) = self.authorization() {
                request = request.header("Authorization", value);
            }
            let response = match request.call() {
                Ok(response) => response,
                Err(error) => {
                    failures.push(format!("{address}: {error}"));
                    continue;
                }
            };
            let status = response.status().as_u16();
            let body = response.into_body().read_to_string()?;
            match status {
                200 => {
                    let record: serde_json::Value = serde_json::from_str(&body)?;
                    println!("{record}");
                    eprintln!(
                        "erased subject {subject:?} through {address}: tombstone signed by key {}",
                        record["signer"].as_str().unwrap_or("?")
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                401 | 403 | 400 | 422 => {
                    return Err(format!("{address} answered {status}: {}", body.trim()).into());
                }
                _ => failures.push(format!("{address} answered {status}: {}", body.trim())),
            }
        }
        Err(format!("no node erased {subject:?}: {}", failures.join("; ")).into())
    }
}

/// Copies the export to `out` line by line, hashing every line but the
/// last, and checks the last (the summary) against that hash.
fn copy_and_check(
    mut reader: impl BufRead,
    out: &mut dyn Write,
) -> Result<CheckedSummary, Box<dyn Error>> {
    let mut hasher = Sha256::new();
    let mut pending: Option<Vec<u8>> = None;
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if let Some(previous) = pending.replace(line) {
            hasher.update(&previous);
        }
        if let Some(current) = &pending {
            out.write_all(current)?;
        }
    }
    out.flush()?;
    let last = pending.ok_or("the node sent an empty export")?;
    let line = last.strip_suffix(b"\n").unwrap_or(&last);
    Ok(summary::check_summary(hasher.finalize().into(), line)?)
}

fn report_export(address: &str, checked: &CheckedSummary, trusted: &[Vec<u8>]) -> ExitCode {
    let statement = &checked.statement;
    let signer = keys::fingerprint(&checked.public_key);
    let pinned = trusted.is_empty() || trusted.contains(&checked.public_key);
    eprintln!(
        "exported {} events of subject {:?} from node {} ({address}) up to log index {}; \
         summary signed by key {signer}{}; directory {}",
        statement.events,
        statement.subject,
        statement.node,
        statement.index,
        if trusted.is_empty() {
            " (not pinned: pass --trust PEM)"
        } else if pinned {
            " (trusted)"
        } else {
            ", which no --trust key names"
        },
        match &statement.first_finding {
            None if statement.directory_verified => "verified intact".to_owned(),
            None => "NOT verified".to_owned(),
            Some(finding) => format!("NOT intact: {finding}"),
        }
    );
    if pinned && statement.directory_verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `text` as one URL path segment: unreserved characters as they are,
/// every other byte percent-encoded.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// HTTPS with the material of a `sluice certs` directory: its CA as the
/// only root, its client certificate (if any) presented, ring as the
/// crypto provider (as on the client port).
fn tls_config(dir: &Path) -> Result<TlsConfig, Box<dyn Error>> {
    let files = TlsFiles::client(dir);
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
    };
    let certificates = |path: &Path| -> Result<Vec<Certificate<'static>>, Box<dyn Error>> {
        let pem = read(path)?;
        let mut certificates = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            if let ureq::tls::PemItem::Certificate(certificate) =
                item.map_err(|error| format!("{}: {error}", path.display()))?
            {
                certificates.push(certificate);
            }
        }
        if certificates.is_empty() {
            return Err(format!("{} holds no certificate", path.display()).into());
        }
        Ok(certificates)
    };
    let roots = certificates(&files.ca)?;
    let mut builder = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider())
        .root_certs(RootCerts::Specific(Arc::new(roots)));
    if let Some((cert, key)) = &files.identity {
        let chain = certificates(cert)?;
        let key = PrivateKey::from_pem(&read(key)?)
            .map_err(|error| format!("{}: {error}", key.display()))?;
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(super::path_segment("alice"), "alice");
        assert_eq!(super::path_segment("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }
}
