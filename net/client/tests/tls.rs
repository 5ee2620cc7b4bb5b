//! TLS on `TcpTransport` and `TcpServer`, on loopback: the principal each
//! connection authenticates as reaches the handler; Raft messages are
//! refused from anyone but the node the frame names; tokens; and the
//! certificates that must be refused (unknown CA, expired, revoked by a
//! revocation list picked up by a reload without a restart). Every test
//! runs under a time bound and binds port 0 only.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use sluice_client::auth::Authenticator;
use sluice_client::tcp::{ServerConfig, TcpConfig, TcpServer, TcpTransport};
use sluice_client::tls::{Tls, TlsFiles};
use sluice_client::wire::{self, Header, Role};
use sluice_model::security::{Principal, Token};
use sluice_model::transport::{
    Caller, Handler, HandlerError, MessageKind, NodeId, Request, Transport, TransportError,
};

const SERVER: NodeId = 2;

/// Answers who called: `"<principal> <source>"`.
#[derive(Debug)]
struct WhoAmI;

impl Handler for WhoAmI {
    async fn handle(&self, caller: Caller, _request: Request) -> Result<Bytes, HandlerError> {
        Ok(Bytes::from(format!(
            "{} {}",
            caller.principal, caller.source
        )))
    }
}

/// Knows one token, owned by `bob`.
#[derive(Debug)]
struct OneToken(Token);

impl Authenticator for OneToken {
    fn token(&self, token: &Token) -> Result<Principal, String> {
        if *token == self.0 {
            Ok(Principal::user("bob"))
        } else {
            Err("unknown token".to_owned())
        }
    }
}

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("the test took longer than 30 s")
}

/// A CA that writes certificates into a directory.
struct Ca {
    dir: PathBuf,
    key: KeyPair,
    cert: rcgen::Certificate,
    serial_next: u8,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Ca {
            dir: dir.to_owned(),
            key,
            cert,
            serial_next: 1,
        }
    }

    /// Writes `<name>.pem` and `<name>-key.pem`; returns the serial.
    fn issue(&mut self, name: &str, node: Option<NodeId>, expired: bool) -> u8 {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let serial = self.serial_next;
        self.serial_next += 1;
        params.serial_number = Some(SerialNumber::from_slice(&[serial]));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(id) = node {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            params.subject_alt_names.push(SanType::URI(
                format!("sluice:node:{id}").try_into().unwrap(),
            ));
        }
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(
            self.dir.join(format!("{name}-key.pem")),
            key.serialize_pem(),
        )
        .unwrap();
        serial
    }

    fn revoke(&self, serials: &[u8]) {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&[serial]),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key).unwrap();
        std::fs::write(self.dir.join("crl.pem"), crl.pem().unwrap()).unwrap();
    }

    fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.dir.join("ca.pem"),
            identity: Some((
                self.dir.join(format!("{name}.pem")),
                self.dir.join(format!("{name}-key.pem")),
            )),
            crl: self.dir.join("crl.pem"),
        }
    }

    fn tls(&self, name: &str) -> Arc<Tls> {
        Tls::load(self.files(name)).unwrap()
    }
}

/// A node (id 2) serving `WhoAmI` over TLS with `node-2`'s certificate.
async fn server(tls: Arc<Tls>, token: Option<Token>) -> TcpServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServerConfig {
        tls: Some(tls),
        authenticator: token.map(|token| Arc::new(OneToken(token)) as Arc<dyn Authenticator>),
        ..ServerConfig::default()
    };
    TcpServer::serve_with(listener, SERVER, WhoAmI, config).unwrap()
}

fn transport(
    source: NodeId,
    address: SocketAddr,
    tls: Arc<Tls>,
    token: Option<Token>,
) -> TcpTransport {
    let config = TcpConfig {
        call_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        tls: Some(tls),
        token,
        ..TcpConfig::default()
    };
    let transport = TcpTransport::new(source, config);
    transport.set_address(SERVER, address);
    transport
}

fn request(kind: MessageKind) -> Request {
    Request {
        kind: kind as u8,
        group: 0,
        body: Bytes::from_static(b"hello"),
    }
}

async fn who(transport: &TcpTransport, kind: MessageKind) -> Result<String, TransportError> {
    let answer = transport.call(SERVER, request(kind)).await?;
    Ok(String::from_utf8(answer.to_vec()).unwrap())
}

fn setup() -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = Ca::new(dir.path(), "test CA");
    ca.issue("node-2", Some(2), false);
    (dir, ca)
}

#[tokio::test]
async fn certificates_name_the_principal_of_every_request() {
    bounded(async {
        let (_dir, mut ca) = setup();
        ca.issue("node-1", Some(1), false);
        ca.issue("alice", None, false);
        let server = server(ca.tls("node-2"), None).await;
        let address = server.local_address();

        let alice = transport(0, address, ca.tls("alice"), None);
        assert_eq!(
            who(&alice, MessageKind::Client).await.unwrap(),
            "User:alice 0"
        );

        let node = transport(1, address, ca.tls("node-1"), None);
        assert_eq!(who(&node, MessageKind::Client).await.unwrap(), "Node:1 1");
        assert_eq!(
            who(&node, MessageKind::AppendEntries).await.unwrap(),
            "Node:1 1"
        );
        assert_eq!(who(&node, MessageKind::Vote).await.unwrap(), "Node:1 1");
    })
    .await;
}

#[tokio::test]
async fn raft_messages_come_only_from_the_node_they_name() {
    bounded(async {
        let (_dir, mut ca) = setup();
        ca.issue("node-1", Some(1), false);
        ca.issue("alice", None, false);
        let server = server(ca.tls("node-2"), None).await;
        let address = server.local_address();

        // A client certificate claiming to be node 1.
        let alice = transport(1, address, ca.tls("alice"), None);
        let refused = who(&alice, MessageKind::AppendEntries).await.unwrap_err();
        assert!(
            matches!(&refused, TransportError::Remote { message, .. }
                if message.contains("User:alice may not send Raft messages as node 1")),
            "{refused}"
        );
        // The same connection still serves its client requests.
        assert_eq!(
            who(&alice, MessageKind::Client).await.unwrap(),
            "User:alice 1"
        );

        // Node 1's certificate claiming to be node 3.
        let impostor = TcpTransport::new(
            3,
            TcpConfig {
                tls: Some(ca.tls("node-1")),
                ..TcpConfig::default()
            },
        );
        // It calls "node 2", which must present node 2's certificate: it does.
        impostor.set_address(SERVER, address);
        let refused = who(&impostor, MessageKind::Vote).await.unwrap_err();
        assert!(
            matches!(&refused, TransportError::Remote { message, .. }
                if message.contains("Node:1 may not send Raft messages as node 3")),
            "{refused}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_node_calling_a_peer_checks_the_peer_is_that_node() {
    bounded(async {
        let (_dir, mut ca) = setup();
        ca.issue("node-1", Some(1), false);
        let server = server(ca.tls("node-2"), None).await;
        // Node 1 believes node 5 listens there; node 2 answers.
        let node = TcpTransport::new(
            1,
            TcpConfig {
                tls: Some(ca.tls("node-1")),
                ..TcpConfig::default()
            },
        );
        node.set_address(5, server.local_address());
        let refused = node.call(5, request(MessageKind::Vote)).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("presented a certificate of Node:2, not of node 5"),
            "{refused}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_token_authenticates_a_client_without_a_certificate() {
    bounded(async {
        let (_dir, ca) = setup();
        let token = Token::new([1; 8], [2; 32]);
        let server = server(ca.tls("node-2"), Some(token.clone())).await;
        let address = server.local_address();
        let no_identity = || Tls::load(ca.files("node-2").without_identity()).unwrap();

        let bob = transport(0, address, no_identity(), Some(token));
        assert_eq!(who(&bob, MessageKind::Client).await.unwrap(), "User:bob 0");

        let wrong = transport(0, address, no_identity(), Some(Token::new([1; 8], [3; 32])));
        let refused = who(&wrong, MessageKind::Client).await.unwrap_err();
        let text = refused.to_string();
        assert!(text.contains("refused this connection"), "{text}");
        assert!(text.contains("unknown token"), "{text}");

        let nothing = transport(0, address, no_identity(), None);
        let refused = who(&nothing, MessageKind::Client).await.unwrap_err();
        assert!(refused.to_string().contains("without a token"), "{refused}");
    })
    .await;
}

/// A TLS connection without a client certificate that sends `body` as its
/// token frame; returns the node's answer frame's role and body.
async fn raw_token(address: SocketAddr, ca: &Ca, body: &[u8]) -> (Role, String) {
    let tls = Tls::load(ca.files("node-2").without_identity()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls.client_config());
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(address.ip().into());
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let header = Header {
        role: Role::Request,
        kind: MessageKind::Auth as u8,
        group: 0,
        request_id: 0,
        source: 0,
    };
    let mut frame = BytesMut::new();
    wire::encode_into(&mut frame, &header, body);
    stream.write_all(&frame).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some(frame) = wire::decode(&mut buf).unwrap() {
            return (
                frame.header.role,
                String::from_utf8_lossy(&frame.body).into_owned(),
            );
        }
        assert!(
            stream.read_buf(&mut buf).await.unwrap() > 0,
            "closed without an answer"
        );
    }
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    bounded(async {
        let (_dir, ca) = setup();
        let token = Token::new([1; 8], [2; 32]);
        let server = server(ca.tls("node-2"), Some(token.clone())).await;
        let address = server.local_address();
        let (role, body) = raw_token(address, &ca, token.expose().as_bytes()).await;
        assert_eq!((role, body.as_str()), (Role::Response, "User:bob"));
        for bad in [&b"sluice-token.zz.zz"[..], b"\xff\xfe", b""] {
            let (role, body) = raw_token(address, &ca, bad).await;
            assert_eq!(role, Role::Failure, "{bad:?}: {body}");
            assert!(body.contains("not"), "{body}");
        }
    })
    .await;
}

/// Whether a client with `tls` is refused by the node at `address`.
async fn refused(address: SocketAddr, tls: Arc<Tls>) -> String {
    let client = transport(0, address, tls, None);
    match who(&client, MessageKind::Client).await {
        Ok(answer) => panic!("admitted as {answer}"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn unknown_ca_and_expired_certificates_are_refused() {
    bounded(async {
        let (dir, mut ca) = setup();
        ca.issue("old", None, true);
        let other_dir = tempfile::tempdir().unwrap();
        let mut other = Ca::new(other_dir.path(), "another CA");
        other.issue("mallory", None, false);
        let server = server(ca.tls("node-2"), None).await;
        let address = server.local_address();

        // Mallory's certificate from another CA, trusting our CA (so the
        // node's certificate checks on her side).
        std::fs::copy(dir.path().join("ca.pem"), other_dir.path().join("ca.pem")).unwrap();
        let text = refused(address, other.tls("mallory")).await;
        assert!(text.contains("UnknownCA"), "{text}");

        let text = refused(address, ca.tls("old")).await;
        assert!(text.contains("CertificateExpired"), "{text}");

        // A client that trusts another CA refuses the node.
        let third_dir = tempfile::tempdir().unwrap();
        let mut third = Ca::new(third_dir.path(), "a third CA");
        third.issue("trudy", None, false);
        let text = refused(address, third.tls("trudy")).await;
        assert!(text.contains("UnknownIssuer"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn a_revocation_list_is_picked_up_without_a_restart() {
    bounded(async {
        let (_dir, mut ca) = setup();
        let alice = ca.issue("alice", None, false);
        ca.issue("carol", None, false);
        let node_tls = ca.tls("node-2");
        let server = server(Arc::clone(&node_tls), None).await;
        let address = server.local_address();
        let before = transport(0, address, ca.tls("alice"), None);
        assert_eq!(
            who(&before, MessageKind::Client).await.unwrap(),
            "User:alice 0"
        );

        ca.revoke(&[alice]);
        assert!(node_tls.reload_if_changed().unwrap());
        assert!(
            !node_tls.reload_if_changed().unwrap(),
            "nothing changed since"
        );

        let text = refused(address, ca.tls("alice")).await;
        assert!(
            text.contains("Revoked") || text.contains("revoked"),
            "{text}"
        );
        // Carol, not revoked, still gets in; Alice's open connection is
        // untouched.
        let carol = transport(0, address, ca.tls("carol"), None);
        assert_eq!(
            who(&carol, MessageKind::Client).await.unwrap(),
            "User:carol 0"
        );
        assert_eq!(
            who(&before, MessageKind::Client).await.unwrap(),
            "User:alice 0"
        );

        // Broken material is refused and the old stays in use.
        std::fs::write(ca.dir.join("node-2-key.pem"), "not a key").unwrap();
        assert!(node_tls.reload_if_changed().is_err());
        let carol = transport(0, address, ca.tls("carol"), None);
        assert_eq!(
            who(&carol, MessageKind::Client).await.unwrap(),
            "User:carol 0"
        );
    })
    .await;
}

/// Without TLS, the cluster secret still names nodes: a connection that
/// proved it as node 1 is `Node:1`, a client's (source 0) is `Anonymous`,
/// and Raft messages come only from the node that proved its id.
#[tokio::test]
async fn with_the_cluster_secret_nodes_are_named_and_clients_anonymous() {
    bounded(async {
        let secret = sluice_client::auth::Secret::new(*b"0123456789abcdef").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server =
            TcpServer::serve_secured(listener, SERVER, WhoAmI, Some(secret.clone())).unwrap();
        let secured = |source| {
            let transport = TcpTransport::new(
                source,
                TcpConfig {
                    secret: Some(secret.clone()),
                    ..TcpConfig::default()
                },
            );
            transport.set_address(SERVER, server.local_address());
            transport
        };
        let node = secured(1);
        assert_eq!(who(&node, MessageKind::Vote).await.unwrap(), "Node:1 1");
        let client = secured(0);
        assert_eq!(
            who(&client, MessageKind::Client).await.unwrap(),
            "Anonymous 0"
        );
        let refused = who(&client, MessageKind::AppendEntries).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("Anonymous may not send Raft messages as node 0"),
            "{refused}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_server_refuses_tls_material_without_its_own_certificate() {
    let (_dir, ca) = setup();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServerConfig {
        tls: Some(Tls::load(ca.files("node-2").without_identity()).unwrap()),
        ..ServerConfig::default()
    };
    let refused = TcpServer::serve_with(listener, SERVER, WhoAmI, config).unwrap_err();
    assert!(
        refused.to_string().contains("has no certificate"),
        "{refused}"
    );
}
