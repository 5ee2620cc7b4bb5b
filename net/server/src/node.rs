//! A Sluice node: the embedded bus as one member of a replicated cluster,
//! serving Raft's messages and the client protocol on one TCP port.
//!
//! ```text
//!  peers ──Raft frames (kinds 1-4)──┐
//!                                   ├─► TcpServer ─► NodeService ─► RaftService ─► Raft
//!  clients ─client frames (kind 16)─┘                     │
//!                                                         └─► Bus (batcher, state, log)
//! ```
//!
//! The node learns where its peers listen from the Raft membership (each
//! member's address is part of it): a task watches the membership and
//! tells the transport every address it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use sluice_audit::KeyPair;
use sluice_core::bus::{Bus, BusConfig, BusError, CheckpointPolicy, Signer};
use sluice_core::io::os::{DirectoryInUse, OsClock, OsDisk, OsEnv};
use sluice_core::io::wall_unix_ms;
use sluice_core::raft::{Durability, Node as RaftNode, RaftService, TransportNetwork};
use sluice_model::names::REPLAY_GROUP;
use sluice_model::security::{Denied, Principal};
use sluice_model::state::{AdminAction, Op, Response};
use sluice_model::transport::{
    Caller, Handler, HandlerError, MessageKind, NodeId, Request, Transport,
};

use sluice_client::auth::Secret;
use sluice_client::protocol::{
    CATCH_UP_WAIT_MS_MAX, CLIENT_GROUP, ClientRequest, ClientResponse, FETCH_BYTES_MAX,
    FETCH_EVENTS_MAX, FETCH_WAIT_MS_MAX, FetchedEvent, LEARNER_LAG_MAX, Metadata, PublishOutcome,
    SECURITY_PAGE_ITEMS_MAX, SecurityItems, SecuritySection, TokenInfo, decode, encode,
};

use crate::authorize::{self, Need};
use crate::quota::Quotas;
use sluice_client::tcp::{ServerConfig, TcpConfig, TcpServer, TcpTransport};
use sluice_client::tls::{self, Tls};

use crate::chain_check::ChainCheckMetrics;

/// How often a node compares its chain hash at the latest checkpoint with
/// its peers', unless configured.
pub const CHAIN_CHECK_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Its id in the cluster (not 0: clients call themselves 0).
    pub id: NodeId,
    /// Where it listens for peers and clients.
    pub listen: SocketAddr,
    /// Its data directory (created if missing).
    pub data_dir: PathBuf,
    /// The cluster secret every connection must prove, if any (without
    /// TLS).
    pub secret: Option<Secret>,
    /// TLS material with this node's certificate: every connection, to
    /// peers and from peers and clients, is TLS (see
    /// `sluice_client::tls`); reloaded when its files change.
    pub tls: Option<Arc<Tls>>,
    /// Principals allowed everything, whatever the access rules say
    /// (`sluice node --superuser`; never replicated: each node's
    /// configuration names them). Empty (as [`NodeConfig::new`] leaves
    /// it): the default, `User:admin` with TLS, `Anonymous` (every
    /// connection without TLS) without, so a plaintext node serves
    /// everyone as before.
    pub superusers: Vec<Principal>,
    /// When publishes are acknowledged: after fsync (default) or once in
    /// the page cache of a majority.
    pub durability: Durability,
    /// Bounds of the connections to peers.
    pub tcp: TcpConfig,
    /// Bounds of the connections peers and clients make to this node (its
    /// `secret` is replaced by the node's).
    pub server: ServerConfig,
    /// How often the leader applies the topics' retention.
    pub retention_interval: Duration,
    /// The size at which the log starts a new segment; retention drops
    /// whole segments.
    pub segment_size: u64,
    /// Where to serve HTTP (`GET /metrics`, the audit API), if anywhere.
    pub http_listen: Option<SocketAddr>,
    /// The node's SM2 key: signs checkpoints (when it leads), export
    /// summaries and erasures. Without one the node writes no checkpoints.
    pub signing_key: Option<Arc<KeyPair>>,
    /// How often the node compares its chain hash at the latest checkpoint
    /// with its peers' (`chain_check`).
    pub chain_check_interval: Duration,
    /// The leader's heartbeat interval (see `BusConfig::heartbeat_interval`):
    /// above the round trip between nodes by a third.
    pub heartbeat_interval: Duration,
}

impl NodeConfig {
    /// A node with defaults: durable, no secret.
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            id,
            listen,
            data_dir: data_dir.into(),
            secret: None,
            tls: None,
            superusers: Vec::new(),
            durability: Durability::Sync,
            tcp: TcpConfig::default(),
            server: ServerConfig::default(),
            retention_interval: BusConfig::default()
                .retention_interval
                .unwrap_or(Duration::from_secs(60)),
            segment_size: BusConfig::default().segment_size,
            http_listen: None,
            signing_key: None,
            chain_check_interval: CHAIN_CHECK_INTERVAL_DEFAULT,
            heartbeat_interval: BusConfig::default().heartbeat_interval,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The id is 0, which clients use.
    #[error("node id 0 is reserved for clients; use 1 or more")]
    ZeroId,
    /// The data directory or the listening socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Another process (another node, an embedded bus) holds the data
    /// directory's lock.
    #[error(transparent)]
    DirectoryInUse(std::io::Error),
    /// The bus did not open.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// A running node. Dropping it without [`ClusterNode::shutdown`] stops
/// serving but leaves Raft to stop with the runtime.
pub struct ClusterNode {
    bus: Bus,
    handler: NodeHandler,
    server: TcpServer,
    addresses: JoinHandle<()>,
    http: Option<(SocketAddr, JoinHandle<()>)>,
    tls_watch: Option<JoinHandle<()>>,
    chain_check: (Arc<ChainCheckMetrics>, JoinHandle<()>),
}

impl fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterNode")
            .field("id", &self.bus.node_id())
            .field("address", &self.server.local_address())
            .finish_non_exhaustive()
    }
}

/// The principals `config` makes superusers: those it names, else
/// `User:admin` with TLS and `Anonymous` without (as `sluice node`).
fn superusers(config: &NodeConfig) -> Vec<Principal> {
    match (config.superusers.is_empty(), &config.tls) {
        (false, _) => config.superusers.clone(),
        (true, Some(_)) => vec![Principal::user("admin")],
        (true, None) => vec![Principal::Anonymous],
    }
}

/// Creates (if missing) and opens a node's data directory, which no other
/// process may hold.
fn open_data_dir(dir: &std::path::Path) -> Result<OsDisk, NodeError> {
    std::fs::create_dir_all(dir).map_err(|source| NodeError::Io {
        what: format!("cannot create the data directory {}", dir.display()),
        source,
    })?;
    match OsDisk::open(dir) {
        Ok(disk) => Ok(disk),
        Err(error) if DirectoryInUse::is(&error) => Err(NodeError::DirectoryInUse(error)),
        Err(source) => Err(NodeError::Io {
            what: format!("cannot open the data directory {}", dir.display()),
            source,
        }),
    }
}

/// Serves HTTP on `address`; returns where it listens and its task.
async fn serve_http(
    address: SocketAddr,
    config: &NodeConfig,
    bus: &Bus<OsEnv>,
    server: &TcpServer,
    chain: Arc<ChainCheckMetrics>,
) -> Result<(SocketAddr, JoinHandle<()>), NodeError> {
    let io = |what: String| move |source| NodeError::Io { what, source };
    let listener = crate::http::bind(address)
        .await
        .map_err(io(format!("cannot serve HTTP on {address}")))?;
    let bound = listener
        .local_addr()
        .map_err(io("HTTP address".to_owned()))?;
    let state = crate::http::HttpState {
        bus: bus.clone(),
        registry: crate::http::metrics::registry(bus, server.stats(), chain),
        data_dir: config.data_dir.clone(),
        signing_key: config.signing_key.clone(),
        superusers: superusers(config),
        tls: config.tls.clone(),
    };
    Ok((bound, crate::http::serve(listener, Arc::new(state))))
}

impl ClusterNode {
    /// Opens the data directory, starts Raft and serves on
    /// `config.listen`. Must run inside a tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<ClusterNode, NodeError> {
        if config.id == 0 {
            return Err(NodeError::ZeroId);
        }
        let io = |what: String| move |source| NodeError::Io { what, source };
        let disk = open_data_dir(&config.data_dir)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(io(format!("cannot listen on {}", config.listen)))?;
        let tcp = TcpConfig {
            secret: config.secret.clone(),
            tls: config.tls.clone(),
            token: None,
            ..config.tcp.clone()
        };
        let transport = TcpTransport::new(config.id, tcp);
        let network = TransportNetwork::new(config.id, Arc::new(transport.clone()));
        let bus_config = BusConfig {
            node_id: config.id,
            durability: config.durability,
            heartbeat_interval: config.heartbeat_interval,
            retention_interval: Some(config.retention_interval),
            segment_size: config.segment_size,
            // A node verifies producer signatures and erasure requests
            // with SM2, as an embedded bus opened through `sluice` does.
            signatures: Arc::new(sluice_audit::Sm2Signatures),
            checkpoints: config.signing_key.clone().map(|key| {
                let signer: Arc<dyn Signer> = key;
                (signer, CheckpointPolicy::default())
            }),
            ..BusConfig::default()
        };
        let bus =
            Bus::<OsEnv>::open_member(disk, Arc::new(OsClock::new()), bus_config, network).await?;
        let handler = NodeHandler(Arc::new(NodeService {
            raft: RaftService::new(bus.raft().clone()),
            bus: bus.clone(),
            transport: transport.clone(),
            superusers: superusers(&config),
            quotas: Quotas::default(),
        }));
        let server_config = ServerConfig {
            secret: config.secret.clone(),
            tls: config.tls.clone(),
            authenticator: Some(Arc::new(crate::tokens::Tokens { bus: bus.clone() })),
            ..config.server.clone()
        };
        let server = TcpServer::serve_with(listener, config.id, handler.clone(), server_config)
            .map_err(io("cannot serve".to_owned()))?;
        let chain = Arc::new(ChainCheckMetrics::default());
        let http = match config.http_listen {
            Some(address) => {
                Some(serve_http(address, &config, &bus, &server, Arc::clone(&chain)).await?)
            }
            None => None,
        };
        let chain_task = crate::chain_check::start(
            bus.clone(),
            transport.clone(),
            config.chain_check_interval,
            Arc::clone(&chain),
        );
        let addresses = tokio::spawn(follow_addresses(bus.clone(), transport));
        let tls_watch = config
            .tls
            .as_ref()
            .map(|tls| tls.watch(tls::RELOAD_INTERVAL));
        info!(
            id = config.id,
            address = %server.local_address(),
            data_dir = %config.data_dir.display(),
            "node started"
        );
        Ok(ClusterNode {
            bus,
            handler,
            server,
            addresses,
            http,
            tls_watch,
            chain_check: (chain, chain_task),
        })
    }

    /// Where the node listens.
    pub fn local_address(&self) -> SocketAddr {
        self.server.local_address()
    }

    /// Where the node serves HTTP, if it does.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(address, _)| *address)
    }

    /// What the chain check found.
    pub fn chain_check(&self) -> &ChainCheckMetrics {
        &self.chain_check.0
    }

    /// The node's bus (its Raft handle, state and log).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// What answers the node's requests, for serving them on another
    /// listener: every request is authorized against the principal its
    /// [`Caller`] names, so whoever serves it must authenticate that.
    pub fn handler(&self) -> NodeHandler {
        self.handler.clone()
    }

    /// Resolves when this node's Raft core stops on its own, with why:
    /// storage failed (a full disk, a failed `fdatasync`, which poisons the
    /// log for good) or another fatal error. Such a node serves nothing
    /// any more; its process should stop with this reason, as `sluice node`
    /// does, and be restarted once the cause is fixed.
    pub async fn stopped(&self) -> String {
        let mut metrics = self.bus.raft().metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_watched().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "the Raft core stopped".to_owned();
            }
        }
    }

    /// Stops serving, then stops Raft; the data stays.
    pub async fn shutdown(self) -> Result<(), BusError> {
        self.server.shutdown().await;
        self.addresses.abort();
        if let Some(task) = self.tls_watch {
            task.abort();
        }
        if let Some((_, task)) = self.http {
            task.abort();
        }
        self.chain_check.1.abort();
        self.bus.close().await
    }
}

/// Tells the transport the address of every member the membership names,
/// whenever it changes.
async fn follow_addresses(bus: Bus, transport: TcpTransport) {
    let mut metrics = bus.raft().metrics();
    loop {
        let membership = Arc::clone(&metrics.borrow_watched().membership_config);
        for (&id, node) in membership.membership().nodes() {
            match node.addr.parse::<SocketAddr>() {
                Ok(address) => transport.set_address(id, address),
                Err(error) => warn!(
                    id,
                    address = %node.addr,
                    %error,
                    "a member's address in the membership is not IP:PORT; it cannot be reached"
                ),
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Answers Raft's messages and clients' requests (see
/// [`ClusterNode::handler`]). Cheap to clone.
#[derive(Clone)]
pub struct NodeHandler(Arc<NodeService>);

impl fmt::Debug for NodeHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeHandler")
            .field("id", &self.0.bus.node_id())
            .finish_non_exhaustive()
    }
}

impl Handler for NodeHandler {
    fn handle(
        &self,
        caller: Caller,
        request: Request,
    ) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        let service = Arc::clone(&self.0);
        async move { service.serve(caller, request).await }
    }
}

/// Answers Raft's messages and clients' requests.
struct NodeService {
    raft: RaftService<OsEnv>,
    bus: Bus,
    transport: TcpTransport,
    superusers: Vec<Principal>,
    quotas: Quotas,
}

impl NodeService {
    async fn serve(&self, caller: Caller, request: Request) -> Result<Bytes, HandlerError> {
        if request.kind != MessageKind::Client as u8 {
            return self.raft.handle(caller, request).await;
        }
        let size = request.body.len();
        let principal = caller.principal;
        let response = match decode::<ClientRequest>(&request.body, "client request") {
            Ok(request) => match self.admit(&principal, &request, size) {
                Err(Refusal::Denied(denied)) => ClientResponse::Denied(denied),
                Err(Refusal::Throttled(wait)) => ClientResponse::Throttled {
                    retry_after_ms: wait.as_millis().try_into().unwrap_or(u64::MAX),
                },
                Ok(()) => match FetchArgs::of(&request) {
                    Some(args) => {
                        // Reading and encoding up to FETCH_BYTES_MAX of events
                        // takes a while: on a task of its own, so that the
                        // requests sharing this connection (served on its
                        // task) go on.
                        let bus = self.bus.clone();
                        let fetched = tokio::spawn(async move {
                            let fetched = fetch(&bus, args).await;
                            encode(&fetched.unwrap_or_else(|error| refusal(&bus, error)))
                        });
                        return fetched.await.map_err(|error| {
                            HandlerError::new(format!("the fetch failed on this node: {error}"))
                        });
                    }
                    None => self.client(principal, request).await,
                },
            },
            Err(message) => ClientResponse::Error {
                message,
                retry: false,
            },
        };
        Ok(encode(&response))
    }

    /// Lets `request` of `size` bytes by `principal` through, or answers
    /// it: throttled when over the principal's quota, denied when a node
    /// asks anything but metadata or a chain hash, or the rules do not allow every access
    /// it needs (see [`authorize`]). Superusers pass the rules, not their
    /// quota. Runs before anything is read or appended.
    fn admit(
        &self,
        principal: &Principal,
        request: &ClientRequest,
        size: usize,
    ) -> Result<(), Refusal> {
        if let Principal::Node(_) = principal {
            return match request {
                ClientRequest::Metadata | ClientRequest::ChainHash { .. } => Ok(()),
                _ => Err(Refusal::Denied(authorize::node_refusal(principal, request))),
            };
        }
        let superuser = self.superusers.contains(principal);
        let state = self.bus.state();
        let security = state.security();
        if let Principal::User(name) = principal {
            let quota = security.quota(principal);
            if let Err(wait) = self
                .quotas
                .charge(name, quota, size, std::time::Instant::now())
            {
                return Err(Refusal::Throttled(wait));
            }
        }
        if superuser {
            return Ok(());
        }
        authorize::check_needs(request, &state, |need| match need {
            Need::Access(access) => security.check(principal, access),
            Need::ProducerName(name) => security
                .confine(principal, name)
                .map_err(|reason| authorize::producer_refusal(principal, name, reason)),
        })
        .map_err(Refusal::Denied)
    }

    async fn client(&self, principal: Principal, request: ClientRequest) -> ClientResponse {
        let result = match request {
            ClientRequest::Metadata => Ok(ClientResponse::Metadata(self.metadata(&principal))),
            ClientRequest::Initialize { members } => self.initialize(&principal, members).await,
            ClientRequest::AddNode {
                id,
                address,
                catch_up_ms,
            } => self.add_node(&principal, id, address, catch_up_ms).await,
            ClientRequest::RemoveNode { id } => self.remove_node(&principal, id).await,
            // Only a node writes admin entries, naming the principal of the
            // connection that asked.
            ClientRequest::Write(Op::Admin { .. }) => {
                refuse("admin entries are written by nodes, not sent by clients".to_owned())
            }
            ClientRequest::Write(op) => self.write(principal, op).await,
            ClientRequest::Security(op) => self
                .admin(principal, AdminAction::Security(op))
                .await
                .map(ClientResponse::Written),
            ClientRequest::SecurityList { section, from } => Ok(self.security_page(section, from)),
            ClientRequest::Publish(events) => self.publish(events).await,
            request @ (ClientRequest::Fetch { .. } | ClientRequest::FetchBounded { .. }) => {
                let args = FetchArgs::of(&request).expect("a fetch request is a fetch");
                fetch(&self.bus, args).await
            }
            ClientRequest::Group { group, member } => Ok(self.group(&group, &member)),
            ClientRequest::Committed {
                group,
                topic,
                partition,
            } => Ok(ClientResponse::Committed(
                self.bus.committed(&group, &topic, partition),
            )),
            ClientRequest::ChainHash { index } => crate::chain_check::answer(&self.bus, index),
        };
        result.unwrap_or_else(|error| refusal(&self.bus, error))
    }

    /// Proposes a client's operation: topic and erasure changes as admin
    /// entries naming `principal`; a dead-letter replay's transaction
    /// after an admin record of it; everything else as it is.
    async fn write(&self, principal: Principal, op: Op) -> Result<ClientResponse, BusError> {
        let response = match op {
            Op::CreateTopic { .. } | Op::AlterTopic { .. } | Op::Erase(_) => {
                self.admin(principal, AdminAction::Apply(Box::new(op)))
                    .await?
            }
            Op::Transaction {
                ref events,
                ref commit,
            } if commit.group == REPLAY_GROUP => {
                let what = self.replay_record(events, commit);
                self.record(principal, what).await?;
                self.bus.propose(op).await?
            }
            op => self.bus.propose(op).await?,
        };
        Ok(ClientResponse::Written(response))
    }

    /// Appends an admin entry: `action`, made by `principal`.
    async fn admin(&self, principal: Principal, action: AdminAction) -> Result<Response, BusError> {
        self.bus.propose(Op::Admin { principal, action }).await
    }

    /// Records in the admin trail a change made outside the state machine
    /// (membership, a replay), before it is made: a change whose record
    /// could not be appended is not made.
    async fn record(&self, principal: Principal, what: String) -> Result<(), BusError> {
        self.ensure_leader()?;
        match self.admin(principal, AdminAction::Record(what)).await? {
            Response::Ok => Ok(()),
            other => Err(BusError::Invalid(format!(
                "the admin trail refused a record: {other:?}"
            ))),
        }
    }

    /// What a replay transaction does, for the admin trail: the dead
    /// letters it republishes (from the replay group's committed offset
    /// to the one it commits) and where to.
    fn replay_record(
        &self,
        events: &sluice_model::event::EventBatch,
        commit: &sluice_model::state::OffsetCommit,
    ) -> String {
        let state = self.bus.state();
        let letters: Vec<String> = commit
            .offsets
            .iter()
            .map(|(topic, partition, next)| {
                let from = state
                    .committed(REPLAY_GROUP, topic, *partition)
                    .unwrap_or(0);
                format!("{topic}/{partition} offsets {from}..{next}")
            })
            .collect();
        let mut targets: Vec<&str> = events.iter().map(|event| event.topic()).collect();
        targets.sort_unstable();
        targets.dedup();
        format!(
            "replay {} dead letter(s) of {} into {}",
            events.len(),
            letters.join(", "),
            targets.join(", ")
        )
    }

    /// One page of the security settings, from item `from` of `section`.
    fn security_page(&self, section: SecuritySection, from: u32) -> ClientResponse {
        let state = self.bus.state();
        let security = state.security();
        let skip = from as usize;
        let take = SECURITY_PAGE_ITEMS_MAX as usize;
        let (items, total) = match section {
            SecuritySection::Rules => (
                SecurityItems::Rules(
                    security
                        .acls()
                        .rules()
                        .skip(skip)
                        .take(take)
                        .cloned()
                        .collect(),
                ),
                security.acls().len(),
            ),
            SecuritySection::Tokens => (
                SecurityItems::Tokens(
                    security
                        .tokens()
                        .skip(skip)
                        .take(take)
                        .map(|record| TokenInfo {
                            id: record.id.clone(),
                            principal: record.principal.clone(),
                            created_ms: record.created_ms,
                            revoked: record.revoked,
                        })
                        .collect(),
                ),
                security.tokens().count(),
            ),
            SecuritySection::Tenants => (
                SecurityItems::Tenants(security.tenants().skip(skip).take(take).cloned().collect()),
                security.tenants().count(),
            ),
            SecuritySection::Members => (
                SecurityItems::Members(
                    security
                        .members()
                        .skip(skip)
                        .take(take)
                        .map(|(principal, tenant)| (principal.to_owned(), tenant.to_owned()))
                        .collect(),
                ),
                security.members().count(),
            ),
            SecuritySection::Quotas => (
                SecurityItems::Quotas(
                    security
                        .quotas()
                        .skip(skip)
                        .take(take)
                        .map(|(principal, quota)| (principal.to_owned(), quota))
                        .collect(),
                ),
                security.quotas().count(),
            ),
        };
        let end = skip.saturating_add(items.len());
        let next = (end < total).then(|| u32::try_from(end).expect("bounded by *_MAX"));
        ClientResponse::SecurityPage { items, next }
    }

    fn leader(&self) -> Option<(NodeId, String)> {
        let receiver = self.bus.raft().metrics();
        let metrics = receiver.borrow_watched();
        let id = metrics.current_leader?;
        let address = metrics.membership_config.membership().get_node(&id)?;
        Some((id, address.addr.clone()))
    }

    /// Refuses with `NotLeader` unless this node leads. Runs for every
    /// publish: it reads the metrics in place rather than copying them.
    fn ensure_leader(&self) -> Result<(), BusError> {
        let leads =
            self.bus.raft().metrics().borrow_watched().current_leader == Some(self.bus.node_id());
        if leads {
            return Ok(());
        }
        let leader = self.leader();
        if leader.as_ref().map(|(id, _)| *id) == Some(self.bus.node_id()) {
            return Ok(());
        }
        Err(BusError::NotLeader {
            leader_id: leader.as_ref().map(|(id, _)| *id),
            leader_address: leader.map(|(_, address)| address),
        })
    }

    /// The cluster as this node sees it, with the topics `principal` may
    /// see (every topic for a superuser).
    fn metadata(&self, principal: &Principal) -> Metadata {
        let metrics = self.bus.raft().metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(&id, node)| (id, node.addr.clone(), voters.contains(&id)))
            .collect();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let superuser = self.superusers.contains(principal);
        let state = self.bus.state();
        let security = state.security();
        let topics = state
            .topics()
            .filter(|topic| {
                superuser
                    || security.visible(
                        principal,
                        sluice_model::security::Resource::Topic(&topic.name),
                    )
            })
            .map(|topic| (topic.name.clone(), topic.partitions))
            .collect();
        Metadata {
            node_id: self.bus.node_id(),
            role: role.to_owned(),
            term: metrics.current_term,
            leader: self.leader(),
            members,
            log: (
                metrics.last_log_index,
                metrics.local_committed.map(|id| id.index),
                metrics.last_applied.map(|id| id.index),
            ),
            topics,
            wall_clock_ms: wall_unix_ms(&**self.bus.clock()),
        }
    }

    /// Initialises the cluster, then records who did in the admin trail
    /// (there is no log to record it in before), once this node leads.
    async fn initialize(
        &self,
        principal: &Principal,
        members: Vec<(NodeId, String)>,
    ) -> Result<ClientResponse, BusError> {
        let mut nodes = BTreeMap::new();
        for (id, address) in members {
            let parsed = parse_address(id, &address)?;
            self.transport.set_address(id, parsed);
            nodes.insert(id, RaftNode::new(address));
        }
        if !nodes.contains_key(&self.bus.node_id()) {
            return Err(BusError::Invalid(format!(
                "the members must include node {}, which is asked to initialise them",
                self.bus.node_id()
            )));
        }
        let what = format!(
            "initialise the cluster with members {}",
            nodes
                .iter()
                .map(|(id, node)| format!("{id} at {}", node.addr))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.bus.initialize(nodes).await?;
        self.record_initialize(principal, what).await;
        Ok(ClientResponse::Done)
    }

    /// Records an initialisation once this node leads. Another node may
    /// win the first election (rarely: the initialising node campaigns at
    /// once); then the record is not written, and the warning says so.
    async fn record_initialize(&self, principal: &Principal, what: String) {
        let led = self
            .bus
            .raft()
            .wait(Some(INITIALIZE_RECORD_WAIT))
            .metrics(
                |m| m.current_leader.is_some(),
                "a leader after initialisation",
            )
            .await;
        let recorded = match led {
            Ok(_) => self.record(principal.clone(), what.clone()).await,
            Err(error) => Err(BusError::Invalid(error.to_string())),
        };
        if let Err(error) = recorded {
            warn!(
                %principal,
                change = %what,
                %error,
                "the cluster was initialised, but the admin trail could not record it"
            );
        }
    }

    /// Adds node `id` at `address`: checks it at once (see
    /// [`ClientRequest::AddNode`]), adds it as a learner, waits up to
    /// `catch_up_ms` for its log to come within [`LEARNER_LAG_MAX`] entries
    /// of this leader's, then makes it a voter. A learner that does not
    /// catch up is removed again: it adds nothing to the cluster but
    /// replication traffic to a node that may not exist, and a node that
    /// does exist keeps what it received, so adding it again (with more
    /// time) resumes where it stopped.
    async fn add_node(
        &self,
        principal: &Principal,
        id: NodeId,
        address: String,
        catch_up_ms: u32,
    ) -> Result<ClientResponse, BusError> {
        self.ensure_leader()?;
        if id == 0 {
            return refuse("node id 0 is reserved for clients; use 1 or more".to_owned());
        }
        let parsed = parse_address(id, &address)?;
        let learner = match self.existing_learner(id, &address, parsed) {
            Ok(learner) => learner,
            Err(message) => return refuse(message),
        };
        if let Err(message) = self.probe(id, parsed).await {
            return refuse(message);
        }
        self.record(principal.clone(), format!("add node {id} at {address}"))
            .await?;
        let raft = self.bus.raft();
        if !learner {
            raft.add_learner(id, RaftNode::new(address.clone()), false)
                .await
                .map_err(map_membership_error)?;
        }
        let wait = Duration::from_millis(u64::from(catch_up_ms.min(CATCH_UP_WAIT_MS_MAX)));
        let waited = raft
            .wait(Some(wait))
            .metrics(
                |m| {
                    m.state != ServerState::Leader
                        || learner_lag(m, id).is_some_and(|lag| lag <= LEARNER_LAG_MAX)
                },
                "the new node catches up",
            )
            .await;
        match waited {
            Ok(metrics) if metrics.state == ServerState::Leader => {}
            Ok(_) => {
                return refuse(format!(
                    "this node stopped leading while node {id} caught up; it stays a learner \
                     (no vote): run `sluice cluster add` again to make it a voter"
                ));
            }
            Err(_) => return refuse(self.remove_laggard(id, &address, wait).await),
        }
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(map_membership_error)?;
        Ok(ClientResponse::Done)
    }

    /// Whether `id` is already a learner at `address` (left by an earlier
    /// add whose leader lost leadership meanwhile: go on from where it
    /// is); why it cannot be added, if it is a voter, a member elsewhere,
    /// or `address` is another member's.
    fn existing_learner(
        &self,
        id: NodeId,
        address: &str,
        parsed: SocketAddr,
    ) -> Result<bool, String> {
        let membership = self.membership();
        let mut learner = false;
        for (member, node) in membership.nodes() {
            let voter = membership.voter_ids().any(|voter| voter == *member);
            let same_address =
                node.addr == address || node.addr.parse::<SocketAddr>().is_ok_and(|a| a == parsed);
            if *member == id && (voter || !same_address) {
                let role = if voter { "a voter" } else { "a learner" };
                return Err(format!(
                    "node {id} is already a member ({role} at {}); nothing was changed (remove \
                     it first to add it again)",
                    node.addr
                ));
            }
            if *member == id {
                learner = true;
            } else if same_address {
                return Err(format!(
                    "{address} is the address of node {member}, a member already; every \
                     node needs an address of its own"
                ));
            }
        }
        Ok(learner)
    }

    /// Removes a learner that did not catch up within `wait`; says why and
    /// what became of it.
    async fn remove_laggard(&self, id: NodeId, address: &str, wait: Duration) -> String {
        let raft = self.bus.raft();
        let metrics = raft.metrics().borrow_watched().clone();
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|replication| replication.get(&id).cloned().flatten())
            .map_or("nothing".to_owned(), |log_id| {
                format!("up to {}", log_id.index)
            });
        let last = metrics.last_log_index.unwrap_or(0);
        let removed = raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await;
        let outcome = match removed {
            Ok(_) => "it was removed again".to_owned(),
            Err(error) => format!(
                "removing it again failed ({error}), so it stays a learner (it does not vote)"
            ),
        };
        format!(
            "node {id} at {address} did not catch up within {wait:?} (it holds {matched} of the \
             leader's {last} entries); {outcome}. Check that it runs and shares the cluster \
             secret, then add it again, with a longer --catch-up-timeout if its log is large"
        )
    }

    /// The membership this node knows.
    fn membership(&self) -> openraft::Membership<NodeId, RaftNode> {
        let config = Arc::clone(&self.bus.raft().metrics().borrow_watched().membership_config);
        config.membership().clone()
    }

    /// Asks the node at `address`, through the cluster's authenticated
    /// transport, who it is: it must answer, prove the cluster secret, and
    /// be node `id` and in no other cluster. Why not, if not.
    async fn probe(&self, id: NodeId, address: SocketAddr) -> Result<(), String> {
        self.transport.set_address(id, address);
        let request = Request {
            kind: MessageKind::Client as u8,
            group: CLIENT_GROUP,
            body: encode(&ClientRequest::Metadata),
        };
        let answer = self.transport.call(id, request).await.map_err(|error| {
            format!(
                "node {id} at {address} did not answer ({error}); start it (with this \
                 cluster's secret, if it has one) before adding it"
            )
        })?;
        let metadata = match decode::<ClientResponse>(&answer, "response") {
            Ok(ClientResponse::Metadata(metadata)) => metadata,
            Ok(other) => return Err(format!("node at {address} answered {other:?}")),
            Err(error) => return Err(format!("node at {address} answered: {error}")),
        };
        if metadata.node_id != id {
            return Err(format!(
                "the node at {address} is node {}, not node {id}",
                metadata.node_id
            ));
        }
        let this = self.bus.node_id();
        if !metadata.members.is_empty() && !metadata.members.iter().any(|(m, ..)| *m == this) {
            let members: Vec<String> = metadata
                .members
                .iter()
                .map(|(m, ..)| m.to_string())
                .collect();
            return Err(format!(
                "node {id} at {address} belongs to another cluster (members {}); give it an \
                 empty data directory to add it here",
                members.join(", ")
            ));
        }
        Ok(())
    }

    async fn remove_node(
        &self,
        principal: &Principal,
        id: NodeId,
    ) -> Result<ClientResponse, BusError> {
        self.ensure_leader()?;
        self.record(principal.clone(), format!("remove node {id}"))
            .await?;
        let raft = self.bus.raft();
        raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(map_membership_error)?;
        Ok(ClientResponse::Done)
    }

    async fn publish(
        &self,
        events: Vec<sluice_model::event::Event>,
    ) -> Result<ClientResponse, BusError> {
        self.ensure_leader()?;
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            #[cfg(feature = "stage-trace")]
            let _ = sluice_client::tcp::TRACE_REQUEST.try_with(|&request| {
                let stamp = sluice_model::trace::stamp_key(
                    event.producer.id,
                    event.partition,
                    event.producer.sequence,
                );
                sluice_model::trace::link(request, stamp);
            });
            pending.push(self.bus.send_stamped(event).await);
        }
        let mut outcomes = Vec::with_capacity(pending.len());
        for sent in pending {
            let outcome = match sent {
                Ok(receipt) => match receipt.wait().await {
                    Ok(receipt) => {
                        #[cfg(feature = "stage-trace")]
                        let _ = sluice_client::tcp::TRACE_REQUEST.try_with(|&request| {
                            sluice_model::trace::record(request, sluice_model::trace::Stage::Woken)
                        });
                        PublishOutcome::Appended {
                            partition: receipt.partition,
                            offset: receipt.offset,
                            duplicate: receipt.duplicate,
                        }
                    }
                    // A definite refusal by the state machine: nothing was
                    // appended for this event.
                    Err(error @ (BusError::Publish(_) | BusError::Event(_))) => {
                        PublishOutcome::Refused {
                            message: error.to_string(),
                        }
                    }
                    // Anything else (leadership lost, the bus closing, a
                    // storage failure) leaves the outcome unknown: the
                    // client sends the whole request again, here or to
                    // another node, and the stamps deduplicate.
                    Err(error) => return Err(error),
                },
                Err(error) => PublishOutcome::Refused {
                    message: error.to_string(),
                },
            };
            outcomes.push(outcome);
        }
        Ok(ClientResponse::Published(outcomes))
    }

    fn group(&self, group: &str, member: &str) -> ClientResponse {
        let state = self.bus.state();
        let Some(info) = state.group(group) else {
            return ClientResponse::Error {
                message: format!("group {group:?} does not exist; join it first"),
                retry: false,
            };
        };
        let Some(assignment) = info.assignment.get(member) else {
            return ClientResponse::Error {
                message: format!("member {member:?} is not in group {group:?}; join again"),
                retry: false,
            };
        };
        let assignment = assignment
            .iter()
            .map(|(topic, partition)| {
                let committed = state.committed(group, topic, *partition);
                (topic.clone(), *partition, committed)
            })
            .collect();
        ClientResponse::Group {
            generation: info.generation,
            assignment,
        }
    }
}

/// Why a request is not served.
enum Refusal {
    /// The rules do not allow it.
    Denied(Denied),
    /// Its principal is over quota: send it again after this long.
    Throttled(Duration),
}

/// How long an initialising node waits for a leader before it records
/// the initialisation in the admin trail.
const INITIALIZE_RECORD_WAIT: Duration = Duration::from_secs(10);

/// A definite refusal, its message as it is.
fn refuse(message: String) -> Result<ClientResponse, BusError> {
    Ok(ClientResponse::Error {
        message,
        retry: false,
    })
}

/// How many entries learner `id` is behind the leader, from the leader's
/// metrics; `None` while it has matched nothing (or this node does not
/// lead).
fn learner_lag(
    metrics: &openraft::RaftMetrics<sluice_core::raft::TypeConfig>,
    id: NodeId,
) -> Option<u64> {
    let matched = metrics.replication.as_ref()?.get(&id)?.as_ref()?;
    Some(
        metrics
            .last_log_index
            .unwrap_or(0)
            .saturating_sub(matched.index),
    )
}

/// The answer to a failed request: where the leader is, or why.
fn refusal(bus: &Bus, error: BusError) -> ClientResponse {
    match error {
        BusError::NotLeader {
            leader_id,
            leader_address,
        } => {
            let leader = match (leader_id, leader_address) {
                (Some(id), Some(address)) => Some((id, address)),
                (Some(id), None) => address_of(bus, id).map(|address| (id, address)),
                _ => None,
            };
            ClientResponse::NotLeader { leader }
        }
        error => {
            let retry = matches!(
                error,
                BusError::Raft(_) | BusError::Timeout(_) | BusError::Closed | BusError::Storage(_)
            );
            ClientResponse::Error {
                message: error.to_string(),
                retry,
            }
        }
    }
}

fn address_of(bus: &Bus, id: NodeId) -> Option<String> {
    let metrics = bus.raft().metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    membership.get_node(&id).map(|node| node.addr.clone())
}

/// What a fetch asks for.
struct FetchArgs {
    topic: String,
    partition: u32,
    offset: u64,
    max: u32,
    max_bytes: u32,
    wait_ms: u32,
}

impl FetchArgs {
    /// The fetch `request` asks for, if it is one. A
    /// [`ClientRequest::Fetch`] gets [`FETCH_BYTES_MAX`] bytes.
    fn of(request: &ClientRequest) -> Option<FetchArgs> {
        match *request {
            ClientRequest::Fetch {
                ref topic,
                partition,
                offset,
                max,
                wait_ms,
            } => Some(FetchArgs {
                topic: topic.clone(),
                partition,
                offset,
                max,
                max_bytes: FETCH_BYTES_MAX,
                wait_ms,
            }),
            ClientRequest::FetchBounded {
                ref topic,
                partition,
                offset,
                max,
                max_bytes,
                wait_ms,
            } => Some(FetchArgs {
                topic: topic.clone(),
                partition,
                offset,
                max,
                max_bytes,
                wait_ms,
            }),
            _ => None,
        }
    }
}

/// Reads a partition from `offset`, waiting up to `wait_ms` for a first
/// event: up to `max` events and `max_bytes` of them (both capped), and
/// always the first event there is, whatever its size (every event fits a
/// frame).
async fn fetch(bus: &Bus, args: FetchArgs) -> Result<ClientResponse, BusError> {
    let FetchArgs {
        topic,
        partition,
        offset,
        max,
        max_bytes,
        wait_ms,
    } = args;
    let max = max.clamp(1, FETCH_EVENTS_MAX) as usize;
    let max_bytes = max_bytes.min(FETCH_BYTES_MAX) as usize;
    let wait = Duration::from_millis(u64::from(wait_ms.min(FETCH_WAIT_MS_MAX)));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (deliveries, next) = bus.read_bytes(&topic, partition, offset, max, max_bytes)?;
        let now = tokio::time::Instant::now();
        if !deliveries.is_empty() || now >= deadline {
            let range = bus
                .state()
                .partition_range(&topic, partition)
                .unwrap_or((0, 0));
            let events = deliveries
                .into_iter()
                .map(|delivery| FetchedEvent {
                    offset: delivery.offset,
                    key: delivery.key,
                    payload: delivery.payload,
                    headers: delivery.headers,
                    producer: delivery.producer,
                    timestamp_ms: delivery.timestamp_ms,
                })
                .collect();
            return Ok(ClientResponse::Fetched {
                events,
                next,
                range,
            });
        }
        bus.wait_applied(deadline - now).await?;
    }
}

fn parse_address(id: NodeId, address: &str) -> Result<SocketAddr, BusError> {
    address.parse().map_err(|error| {
        BusError::Invalid(format!(
            "node {id}'s address {address:?} is not IP:PORT ({error})"
        ))
    })
}

/// Membership changes fail like writes: not the leader, or unknown.
fn map_membership_error(
    error: openraft::error::RaftError<
        sluice_core::raft::TypeConfig,
        openraft::error::ClientWriteError<sluice_core::raft::TypeConfig>,
    >,
) -> BusError {
    match error.forward_to_leader() {
        Some(forward) => BusError::NotLeader {
            leader_id: forward.leader_id,
            leader_address: forward.leader_node.as_ref().map(|node| node.addr.clone()),
        },
        None => BusError::Invalid(format!("the membership change failed: {error}")),
    }
}
