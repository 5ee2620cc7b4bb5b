//! `sluice certs`: a development CA with node and client certificates, and
//! their revocation.
//!
//! Layout of the directory (what `sluice node --tls-dir` and the client
//! commands' `--tls-dir` read, see `sluice_client::tls`):
//!
//! ```text
//! DIR/ca.pem, DIR/ca-key.pem        the CA (keep ca-key.pem away from nodes in production)
//! DIR/node-<id>.pem, -key.pem       node certificates: SAN URI sluice:node:<id>, serverAuth + clientAuth
//! DIR/client.pem, client-key.pem    the first client named (admin by default)
//! DIR/<name>/{ca.pem, client.pem, client-key.pem}
//!                                   each client's own TLS directory
//! DIR/crl.pem                       the revocation list, once something is revoked
//! ```
//!
//! Running it again on a directory that holds a CA reuses the CA and
//! issues the certificates named afresh (new keys): that is how a
//! certificate is renewed or rotated, and nodes pick the new files up
//! without a restart.

use std::error::Error;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

use sluice_client::tls::{
    CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE, CRL_FILE, NODE_URI_PREFIX, node_cert_file,
    node_key_file,
};
use sluice_model::security::valid_principal_name;

use super::Outcome;

/// The CA's private key file name.
const CA_KEY_FILE: &str = "ca-key.pem";

/// How long the development CA is valid.
const CA_DAYS: i64 = 3650;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    create: CreateArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Revoke a client's or a node's certificate: adds it to DIR/crl.pem,
    /// which nodes reading DIR pick up within a second (copy it to the
    /// TLS directory of every node that does not).
    Revoke {
        /// The directory holding the CA (ca.pem, ca-key.pem).
        #[arg(long)]
        dir: PathBuf,
        /// The client whose certificate (DIR/NAME/client.pem) to revoke.
        #[arg(
            long,
            value_name = "NAME",
            conflicts_with = "node",
            required_unless_present = "node"
        )]
        client: Option<String>,
        /// The node whose certificate (DIR/node-ID.pem) to revoke.
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Where to write the CA and the certificates (created if missing; an
    /// existing CA there is reused).
    #[arg(long, required = false)]
    dir: Option<PathBuf>,
    /// Comma-separated node ids to issue node certificates for.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    nodes: Vec<u64>,
    /// Comma-separated client names to issue client certificates for; the
    /// first also becomes DIR/client.pem. `--clients ''` issues none (to
    /// renew node certificates alone).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NAMES",
        default_value = "admin"
    )]
    clients: Vec<String>,
    /// A host name or IP address the nodes are reached at, besides
    /// localhost, 127.0.0.1 and ::1 (repeatable). Clients and peers check
    /// it against the address they dial.
    #[arg(long, value_name = "NAME")]
    host: Vec<String>,
    /// How long the node and client certificates are valid, in days.
    #[arg(long, default_value_t = 365, value_name = "DAYS")]
    days: i64,
}

pub(crate) fn run(mut args: Args) -> Outcome {
    args.create.clients.retain(|name| !name.is_empty());
    match args.command {
        Some(Command::Revoke { dir, client, node }) => revoke(&dir, client.as_deref(), node),
        None => create(args.create),
    }
}

/// A CA able to sign: its key and a certificate object carrying its name.
struct Ca {
    key: KeyPair,
    cert: Certificate,
}

fn create(args: CreateArgs) -> Outcome {
    let Some(dir) = args.dir else {
        return Err("give the directory to write to: sluice certs --dir DIR".into());
    };
    for name in &args.clients {
        check_client_name(name)?;
    }
    if args.nodes.contains(&0) {
        return Err("node id 0 is reserved for clients; use 1 or more".into());
    }
    if args.days <= 0 {
        return Err(format!("--days {} must be at least 1", args.days).into());
    }
    std::fs::create_dir_all(&dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let (ca, reused) = ca(&dir)?;
    let ca_pem = std::fs::read(dir.join(CA_FILE))
        .map_err(|error| format!("cannot read {}: {error}", dir.join(CA_FILE).display()))?;
    for &id in &args.nodes {
        let (cert, key) = node_certificate(&ca, id, &args.host, args.days)?;
        write(&dir.join(node_cert_file(id)), cert.as_bytes(), false)?;
        write(&dir.join(node_key_file(id)), key.as_bytes(), true)?;
    }
    for (index, name) in args.clients.iter().enumerate() {
        let (cert, key) = client_certificate(&ca, name, args.days)?;
        let own = dir.join(name);
        std::fs::create_dir_all(&own)
            .map_err(|error| format!("cannot create {}: {error}", own.display()))?;
        write(&own.join(CA_FILE), &ca_pem, false)?;
        write(&own.join(CLIENT_CERT_FILE), cert.as_bytes(), false)?;
        write(&own.join(CLIENT_KEY_FILE), key.as_bytes(), true)?;
        if index == 0 {
            write(&dir.join(CLIENT_CERT_FILE), cert.as_bytes(), false)?;
            write(&dir.join(CLIENT_KEY_FILE), key.as_bytes(), true)?;
        }
    }
    let ca_said = if reused {
        "reused the CA"
    } else {
        "created a CA"
    };
    println!("{ca_said} in {}", dir.display());
    if !args.nodes.is_empty() {
        let ids: Vec<String> = args.nodes.iter().map(u64::to_string).collect();
        println!(
            "node certificates for nodes {}: start each with `sluice node --id ID --tls-dir {}`",
            ids.join(", "),
            dir.display()
        );
    }
    if let Some(first) = args.clients.first() {
        println!(
            "client certificates for {}: `--tls-dir {}` is {first}; `--tls-dir {}/NAME` is NAME",
            args.clients.join(", "),
            dir.display(),
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check_client_name(name: &str) -> Result<(), Box<dyn Error>> {
    let path_safe = name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    if !path_safe || !valid_principal_name(name) {
        return Err(format!(
            "client name {name:?} is not usable: letters, digits, '.', '_' and '-' only, not \
             starting with '.'"
        )
        .into());
    }
    Ok(())
}

/// The CA in `dir`, created if there is none; whether it was there.
fn ca(dir: &Path) -> Result<(Ca, bool), Box<dyn Error>> {
    let (cert_path, key_path) = (dir.join(CA_FILE), dir.join(CA_KEY_FILE));
    if cert_path.exists() {
        return Ok((load_ca(dir)?, true));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    // A name of its own: certificates of two development CAs must not
    // look like one issuer's (a peer then reports an unknown issuer, not
    // a bad signature).
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|error| format!("no random bytes: {error}"))?;
    let tag: String = tag.iter().map(|byte| format!("{byte:02x}")).collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Sluice development CA {tag}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial()?);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CA_DAYS);
    let cert = params.self_signed(&key)?;
    write(&key_path, key.serialize_pem().as_bytes(), true)?;
    write(&cert_path, cert.pem().as_bytes(), false)?;
    Ok((Ca { key, cert }, false))
}

fn load_ca(dir: &Path) -> Result<Ca, Box<dyn Error>> {
    let (cert_path, key_path) = (dir.join(CA_FILE), dir.join(CA_KEY_FILE));
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|error| {
            format!(
                "cannot read {}: {error}; the CA's certificate and key must both be in {}",
                path.display(),
                dir.display()
            )
        })
    };
    let key = KeyPair::from_pem(&read(&key_path)?)
        .map_err(|error| format!("{} holds no usable key: {error}", key_path.display()))?;
    let params = CertificateParams::from_ca_cert_pem(&read(&cert_path)?)
        .map_err(|error| format!("{} holds no usable CA: {error}", cert_path.display()))?;
    // An issuer object with the CA's name and key: what signing needs (the
    // CA certificate on disk stays as it is).
    let cert = params.self_signed(&key)?;
    Ok(Ca { key, cert })
}

/// A random positive 16-byte serial number.
fn serial() -> Result<SerialNumber, Box<dyn Error>> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| format!("no random bytes: {error}"))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn leaf_params(days: i64) -> Result<CertificateParams, Box<dyn Error>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.serial_number = Some(serial()?);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Node `id`'s certificate and key, PEM.
fn node_certificate(
    ca: &Ca,
    id: u64,
    hosts: &[String],
    days: i64,
) -> Result<(String, String), Box<dyn Error>> {
    let mut params = leaf_params(days)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("sluice node {id}"));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let uri = format!("{NODE_URI_PREFIX}{id}");
    params.subject_alt_names = vec![
        SanType::URI(uri.try_into()?),
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
    ];
    for host in hosts {
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|error| format!("--host {host:?} is not a host name: {error}"))?,
            ),
        };
        params.subject_alt_names.push(name);
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.cert, &ca.key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Client `name`'s certificate and key, PEM.
fn client_certificate(ca: &Ca, name: &str, days: i64) -> Result<(String, String), Box<dyn Error>> {
    let mut params = leaf_params(days)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.cert, &ca.key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that
/// a node reloading meanwhile reads the old file or the new one, never
/// half of one; `private` files are readable by their owner only.
fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), Box<dyn Error>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let failed = |error: std::io::Error| format!("cannot write {}: {error}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&temporary)
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)?;
    Ok(())
}

fn revoke(dir: &Path, client: Option<&str>, node: Option<u64>) -> Outcome {
    let (who, cert_path) = match (client, node) {
        (Some(name), _) => {
            check_client_name(name)?;
            (
                format!("client {name}"),
                dir.join(name).join(CLIENT_CERT_FILE),
            )
        }
        (None, Some(id)) => (format!("node {id}"), dir.join(node_cert_file(id))),
        (None, None) => return Err("name what to revoke: --client NAME or --node ID".into()),
    };
    let ca = load_ca(dir)?;
    let serial = serial_of(&cert_path)?;
    let crl_path = dir.join(CRL_FILE);
    let mut revoked = revoked_in(&crl_path)?;
    let now = OffsetDateTime::now_utc();
    if revoked.iter().any(|(known, _)| *known == serial) {
        println!(
            "{who}'s certificate is revoked already ({})",
            crl_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    revoked.push((serial, now));
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(CA_DAYS),
        // Increases with every list issued (one per second at most).
        crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .into_iter()
            .map(|(serial, at)| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: at,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.cert, &ca.key)?;
    write(&crl_path, crl.pem()?.as_bytes(), false)?;
    println!(
        "revoked {who}'s certificate: {} lists it. Nodes whose --tls-dir is {} refuse it within \
         a second; copy the file into every other node's TLS directory",
        crl_path.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The serial number of the certificate in `path`.
fn serial_of(path: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    let pem = std::fs::read(path)
        .map_err(|error| format!("cannot read the certificate {}: {error}", path.display()))?;
    let der = CertificateDer::from_pem_slice(&pem)
        .map_err(|error| format!("{} holds no certificate: {error}", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|error| format!("{} does not parse: {error}", path.display()))?;
    Ok(cert.raw_serial().to_vec())
}

/// A revoked certificate's serial number and when it was revoked.
type Revoked = (Vec<u8>, OffsetDateTime);

/// The serials (and revocation times) the list in `path` holds; none if
/// there is no list yet.
fn revoked_in(path: &Path) -> Result<Vec<Revoked>, Box<dyn Error>> {
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display()).into()),
    };
    let der = CertificateRevocationListDer::from_pem_slice(&pem)
        .map_err(|error| format!("{} holds no revocation list: {error}", path.display()))?;
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
        .map_err(|error| format!("{} does not parse: {error}", path.display()))?;
    let mut revoked = Vec::new();
    for entry in crl.iter_revoked_certificates() {
        let at = OffsetDateTime::from_unix_timestamp(entry.revocation_date.timestamp())?;
        revoked.push((entry.raw_serial().to_vec(), at));
    }
    Ok(revoked)
}
