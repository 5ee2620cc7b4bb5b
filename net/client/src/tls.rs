//! TLS material for connections: the cluster's CA, this side's certificate
//! and key, and a certificate revocation list, read from files, turned into
//! rustls configurations, and reloaded when the files change.
//!
//! ### Who a certificate names
//! A certificate is trusted when the cluster's CA (`ca.pem`) issued it, it
//! is within its validity period, and the revocation list (`crl.pem`, if
//! present) does not name it. Its principal ([`principal_of`]) is then:
//! - [`Principal::Node`]`(id)` if a subject alternative name is the URI
//!   `sluice:node:<id>` ([`NODE_URI_PREFIX`]): a node certificate. Node
//!   certificates carry both the serverAuth and clientAuth key usages, as a
//!   node both serves and calls its peers.
//! - otherwise [`Principal::User`] named by the subject's common name: a
//!   client certificate (clientAuth only, so it cannot serve as a node's).
//!
//! A client checks that the node it reaches presents a node certificate
//! valid for the address it dialled (an IP address SAN); a node calling a
//! peer checks in addition that it is that peer's id.
//!
//! ### Reloading
//! [`Tls::reload_if_changed`] reads the files again and, if their bytes
//! differ from those loaded, builds new configurations and swaps them in:
//! connections made afterwards use them, connections already open keep
//! theirs. Material that does not load (a key that does not match its
//! certificate, a file half written) is refused with a logged reason and
//! the previous material stays in use. [`Tls::watch`] does this on a
//! timer; `sluice node` also on SIGHUP.
//!
//! ### Fault model
//! Files may be missing, unreadable, half written or inconsistent at any
//! moment; none of this stops a running node (it keeps what it has), and
//! at start it is an error naming the file and what to do.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tracing::{info, warn};

use sluice_model::security::{Principal, valid_principal_name};
use sluice_model::transport::NodeId;

pub mod fuzzing;

/// The subject alternative name URI that makes a certificate a node's:
/// `sluice:node:<id>`.
pub const NODE_URI_PREFIX: &str = "sluice:node:";

/// How often [`Tls::watch`] looks at the files.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The CA certificate's file name in a TLS directory.
pub const CA_FILE: &str = "ca.pem";
/// The revocation list's file name in a TLS directory (optional).
pub const CRL_FILE: &str = "crl.pem";
/// The client certificate's file name in a TLS directory.
pub const CLIENT_CERT_FILE: &str = "client.pem";
/// The client key's file name in a TLS directory.
pub const CLIENT_KEY_FILE: &str = "client-key.pem";

/// Node `id`'s certificate file name in a TLS directory.
pub fn node_cert_file(id: NodeId) -> String {
    format!("node-{id}.pem")
}

/// Node `id`'s key file name in a TLS directory.
pub fn node_key_file(id: NodeId) -> String {
    format!("node-{id}-key.pem")
}

/// Where the material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) every peer's certificate must chain to.
    pub ca: PathBuf,
    /// This side's certificate chain and private key; `None` for a client
    /// that authenticates with a token.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The revocation list; used when the file exists (it may appear
    /// later, and is then picked up by a reload).
    pub crl: PathBuf,
}

impl TlsFiles {
    /// Node `id`'s material in `dir`: `ca.pem`, `node-<id>.pem`,
    /// `node-<id>-key.pem`, and `crl.pem` if present.
    pub fn node(dir: &Path, id: NodeId) -> TlsFiles {
        TlsFiles {
            ca: dir.join(CA_FILE),
            identity: Some((dir.join(node_cert_file(id)), dir.join(node_key_file(id)))),
            crl: dir.join(CRL_FILE),
        }
    }

    /// A client's material in `dir`: `ca.pem`, `client.pem` and
    /// `client-key.pem` if the directory has a client certificate, and
    /// `crl.pem` if present.
    pub fn client(dir: &Path) -> TlsFiles {
        let cert = dir.join(CLIENT_CERT_FILE);
        TlsFiles {
            ca: dir.join(CA_FILE),
            identity: cert.exists().then(|| (cert, dir.join(CLIENT_KEY_FILE))),
            crl: dir.join(CRL_FILE),
        }
    }

    /// The same files without this side's certificate (a client that
    /// presents a token instead).
    pub fn without_identity(self) -> TlsFiles {
        TlsFiles {
            identity: None,
            ..self
        }
    }
}

/// Why TLS material did not load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// A file holds no PEM item of the kind expected, or bad PEM.
    #[error(
        "{} holds no valid {what} in PEM; `sluice certs --dir DIR` writes one ({detail})",
        path.display()
    )]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// rustls refused the material (a key that does not match its
    /// certificate, an unsupported key type, a CA that is not one).
    #[error("the TLS material in {} does not load: {source}", path.display())]
    Rustls {
        /// The file at fault, or the certificate's.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// The verifier of peers' certificates could not be built (a bad
    /// revocation list, no usable CA certificate).
    #[error("cannot check peers' certificates against {} and {}: {detail}", ca.display(), crl.display())]
    Verifier {
        /// The CA file.
        ca: PathBuf,
        /// The revocation list file.
        crl: PathBuf,
        /// rustls's reason.
        detail: String,
    },
}

/// The rustls configurations built from one reading of the files.
#[derive(Debug)]
struct Material {
    /// `None` without an identity: only a node serves.
    server: Option<Arc<rustls::ServerConfig>>,
    client: Arc<rustls::ClientConfig>,
}

/// The files' bytes as last loaded, to tell whether they changed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Snapshot(Vec<Option<Vec<u8>>>);

/// TLS material, reloadable; cheap to share (`Arc<Tls>`).
pub struct Tls {
    files: TlsFiles,
    current: ArcSwap<Material>,
    loaded: Mutex<(Snapshot, Option<String>)>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the material `files` name; fails naming the file at fault.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let snapshot = read_snapshot(&files);
        let material = build(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: ArcSwap::from_pointee(material),
            loaded: Mutex::new((snapshot, None)),
        }))
    }

    /// The files this material comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether this side presents a certificate of its own.
    pub fn has_identity(&self) -> bool {
        self.files.identity.is_some()
    }

    /// The configuration for accepting connections; `None` without an
    /// identity (a client's material).
    pub fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current.load().server.clone()
    }

    /// The configuration for making connections.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.current.load().client)
    }

    /// Reads the files again and, if their bytes changed since the last
    /// load, swaps in the new material. `Ok(true)` if it did; an error (and
    /// the old material kept) if the new material does not load.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let snapshot = read_snapshot(&self.files);
        let mut loaded = self.loaded.lock().expect("TLS reload lock poisoned");
        if loaded.0 == snapshot {
            return Ok(false);
        }
        let material = build(&self.files)?;
        self.current.store(Arc::new(material));
        *loaded = (snapshot, None);
        Ok(true)
    }

    /// [`Tls::reload_if_changed`], logging the outcome: a reload at info,
    /// a refusal at warning (once per distinct reason, so a file left
    /// broken does not flood the log).
    pub fn reload_logged(&self, why: &str) {
        match self.reload_if_changed() {
            Ok(true) => info!(
                files = ?self.files,
                why,
                "reloaded the TLS material; new connections use it"
            ),
            Ok(false) => {}
            Err(error) => {
                let reason = error.to_string();
                let mut loaded = self.loaded.lock().expect("TLS reload lock poisoned");
                if loaded.1.as_deref() != Some(reason.as_str()) {
                    warn!(
                        %reason,
                        why,
                        "the TLS files changed but do not load; the previous material stays in use"
                    );
                    loaded.1 = Some(reason);
                }
            }
        }
    }

    /// Polls the files every `interval` and reloads them when they change,
    /// until the task is aborted. Must be called inside a tokio runtime.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                tls.reload_logged("the files changed");
            }
        })
    }
}

fn read_snapshot(files: &TlsFiles) -> Snapshot {
    let mut paths = vec![&files.ca, &files.crl];
    if let Some((cert, key)) = &files.identity {
        paths.push(cert);
        paths.push(key);
    }
    Snapshot(
        paths
            .into_iter()
            .map(|path| std::fs::read(path).ok())
            .collect(),
    )
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let pem = |detail: String| TlsError::Pem {
        path: path.to_owned(),
        what: "certificate",
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem(error.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| TlsError::Pem {
        path: path.to_owned(),
        what: "private key",
        detail: error.to_string(),
    })
}

/// The revocation lists in `path`; none if the file does not exist.
fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TlsError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_owned(),
            what: "certificate revocation list",
            detail: error.to_string(),
        })
}

/// The crypto provider every configuration uses: ring's (X25519 and the
/// NIST curves for key exchange, AES-GCM and ChaCha20-Poly1305). rustls
/// marks it deprecated for lacking post-quantum key exchange; its
/// aws-lc-rs provider has it but needs a C build of AWS-LC, which this
/// workspace avoids. Switching is this one function.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(files: &TlsFiles) -> Result<Material, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for cert in certificates(&files.ca)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            path: files.ca.clone(),
            source,
        })?;
    }
    let roots = Arc::new(roots);
    let crls = revocation_lists(&files.crl)?;
    let verifier_error = |detail: String| TlsError::Verifier {
        ca: files.ca.clone(),
        crl: files.crl.clone(),
        detail,
    };
    let rustls_error = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Rustls { path, source }
    };
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .with_crls(crls.clone())
            .only_check_end_entity_revocation()
            .build()
            .map_err(|error| verifier_error(error.to_string()))?;
    let client_builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(rustls_error(&files.ca))?
        .with_webpki_verifier(server_verifier);
    let Some((cert_path, key_path)) = &files.identity else {
        return Ok(Material {
            server: None,
            client: Arc::new(client_builder.with_no_client_auth()),
        });
    };
    let chain = certificates(cert_path)?;
    let key = private_key(key_path)?;
    let client = client_builder
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(rustls_error(cert_path))?;
    // Clients without a certificate are let through the handshake: they
    // present a token next, and are refused if they do not.
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unauthenticated()
            .build()
            .map_err(|error| verifier_error(error.to_string()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_error(cert_path))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(rustls_error(cert_path))?;
    Ok(Material {
        server: Some(Arc::new(server)),
        client: Arc::new(client),
    })
}

/// The principal a (verified) certificate names: `Node:<id>` for a node
/// certificate (a `sluice:node:<id>` URI SAN), else `User:<common name>`.
/// Why not, if it names neither validly.
pub fn principal_of(cert: &CertificateDer<'_>) -> Result<Principal, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|error| format!("the certificate does not parse: {error}"))?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|error| format!("the certificate's subject alternative names: {error}"))?;
    for name in names.iter().flat_map(|names| &names.value.general_names) {
        let x509_parser::extensions::GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) else {
            continue;
        };
        return match id.parse::<NodeId>() {
            Ok(id) if id > 0 => Ok(Principal::Node(id)),
            _ => Err(format!(
                "the certificate's node URI {uri:?} does not name a node id of 1 or more"
            )),
        };
    }
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .ok_or_else(|| {
            "the certificate names neither a node (a sluice:node:<id> URI) nor a user (a \
             common name)"
                .to_owned()
        })?;
    if !valid_principal_name(common_name) {
        return Err(format!(
            "the certificate's common name {common_name:?} is not a valid principal name \
             (printable ASCII, no spaces or colons)"
        ));
    }
    Ok(Principal::user(common_name))
}
