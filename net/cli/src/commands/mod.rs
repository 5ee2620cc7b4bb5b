//! The cluster commands of the `sluice` tool: each module has its clap
//! arguments and a `run` that returns the process exit code.

pub(crate) mod backup;
pub(crate) mod bench;
pub(crate) mod certs;
pub(crate) mod cluster;
pub(crate) mod dlq;
pub(crate) mod inspect;
pub(crate) mod node;
pub(crate) mod publish;
pub(crate) mod security;
pub(crate) mod tail;
pub(crate) mod topics;

use std::error::Error;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_client::auth::Secret;
use sluice_client::client::{Client, ClientConfig};
use sluice_client::tls::{Tls, TlsFiles};
use sluice_model::security::Token;

/// What a command returns: an exit code, or an error printed by `main`.
pub(crate) type Outcome = Result<std::process::ExitCode, Box<dyn Error>>;

/// How a client command reaches the cluster.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClusterArgs {
    /// Comma-separated addresses (HOST:PORT) of any of the cluster's nodes.
    #[arg(long, env = "SLUICE_CLUSTER", value_name = "ADDRS")]
    cluster: String,
    #[command(flatten)]
    credentials: Credentials,
    /// How long one request may take, failovers included, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// How a client proves who it is: TLS (a client certificate, or a token
/// over TLS), or, without TLS, the cluster secret.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Credentials {
    /// Directory holding the cluster's CA (ca.pem) and this client's
    /// certificate (client.pem, client-key.pem), as `sluice certs` writes.
    #[arg(long, env = "SLUICE_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// A token (sluice-token.…) to authenticate with instead of a client
    /// certificate; needs --tls-dir for the CA.
    #[arg(
        long,
        env = "SLUICE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// File holding the cluster secret, for a cluster without TLS that has
    /// one.
    #[arg(long, env = "SLUICE_SECRET_FILE", value_name = "FILE")]
    secret_file: Option<PathBuf>,
}

impl Credentials {
    /// Fills in `config`'s secret, TLS material and token.
    pub(crate) fn apply(&self, config: &mut ClientConfig) -> Result<(), Box<dyn Error>> {
        config.secret = load_secret(self.secret_file.as_deref())?;
        let token = self
            .token
            .as_deref()
            .map(Token::parse)
            .transpose()
            .map_err(|error| format!("--token / SLUICE_TOKEN: {error}"))?;
        let Some(dir) = &self.tls_dir else {
            if token.is_some() {
                return Err("a token travels only over TLS: give --tls-dir DIR (or \
                            SLUICE_TLS_DIR), a directory holding the cluster's ca.pem"
                    .into());
            }
            return Ok(());
        };
        let mut files = TlsFiles::client(dir);
        if token.is_some() {
            files = files.without_identity();
        } else if files.identity.is_none() {
            return Err(format!(
                "{} holds no client certificate ({}): use a directory `sluice certs` wrote for \
                 a client, or authenticate with --token",
                dir.display(),
                sluice_client::tls::CLIENT_CERT_FILE
            )
            .into());
        }
        config.tls = Some(load_tls(files)?);
        config.token = token;
        Ok(())
    }
}

/// Loads TLS material, naming the file at fault.
pub(crate) fn load_tls(files: TlsFiles) -> Result<Arc<Tls>, Box<dyn Error>> {
    Ok(Tls::load(files)?)
}

impl ClusterArgs {
    pub(crate) fn client(&self) -> Result<Client, Box<dyn Error>> {
        let seeds = parse_addresses(&self.cluster)?;
        let mut config = ClientConfig::new(seeds);
        self.credentials.apply(&mut config)?;
        config.request_timeout = Duration::from_secs(self.timeout);
        Ok(Client::new(config)?)
    }

    pub(crate) fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub(crate) fn addresses(&self) -> Result<Vec<SocketAddr>, Box<dyn Error>> {
        parse_addresses(&self.cluster)
    }
}

/// Reads the secret file, if one is named.
pub(crate) fn load_secret(
    path: Option<&std::path::Path>,
) -> Result<Option<Secret>, Box<dyn Error>> {
    Ok(path.map(Secret::from_file).transpose()?)
}

/// Parses `HOST:PORT,HOST:PORT,...`, resolving host names.
pub(crate) fn parse_addresses(list: &str) -> Result<Vec<SocketAddr>, Box<dyn Error>> {
    let mut addresses = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        addresses.push(resolve(item)?);
    }
    if addresses.is_empty() {
        return Err("--cluster names no address; give HOST:PORT[,HOST:PORT...]".into());
    }
    Ok(addresses)
}

pub(crate) fn resolve(item: &str) -> Result<SocketAddr, Box<dyn Error>> {
    let mut resolved = item
        .to_socket_addrs()
        .map_err(|error| format!("{item:?} is not a HOST:PORT address: {error}"))?;
    resolved
        .next()
        .ok_or_else(|| format!("{item:?} resolves to no address").into())
}

/// A multi-threaded tokio runtime for one command.
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(feature = "planted-bugs")]
    plant_from_env(&mut builder);
    builder.build()
}

/// Test builds only: switches on the bug `SLUICE_PLANTED_BUG` names on
/// this thread and every runtime thread (the switch is per thread).
#[cfg(feature = "planted-bugs")]
fn plant_from_env(builder: &mut tokio::runtime::Builder) {
    use sluice_model::testing::planted::{self, Bug};
    let Ok(name) = std::env::var("SLUICE_PLANTED_BUG") else {
        return;
    };
    let bug = Bug::from_name(&name).unwrap_or_else(|| {
        let known: Vec<&str> = Bug::ALL.iter().map(|bug| bug.name()).collect();
        panic!("SLUICE_PLANTED_BUG={name:?} names no planted bug; known: {known:?}")
    });
    tracing::warn!(bug = bug.name(), "running with a planted bug (test build)");
    planted::plant(Some(bug));
    builder.on_thread_start(move || planted::plant(Some(bug)));
}
