//! Tokens over TLS, against an in-process TLS node whose replicated state
//! holds the token records (written as admin entries, as `sluice token
//! create` does): a token authenticates a client without a certificate,
//! in-process and through the CLI's `--token`; a wrong, revoked or
//! malformed token is refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use sluice_client::client::{Client, ClientConfig, ClientError};
use sluice_client::protocol::ClientRequest;
use sluice_client::tls::{Tls, TlsFiles};
use sluice_model::security::{Principal, SecurityOp, Token};
use sluice_model::state::{AdminAction, Op};
use sluice_server::node::{ClusterNode, NodeConfig};

use common::{sluice_ok, sluice_with_env, text};

/// A client of `node` that presents `token` and no certificate.
fn token_client(node: &ClusterNode, certs: &Path, token: Token) -> Client {
    let mut config = ClientConfig::new(vec![node.local_address()]);
    config.tls = Some(Tls::load(TlsFiles::client(certs).without_identity()).unwrap());
    config.token = Some(token);
    config.request_timeout = Duration::from_secs(5);
    Client::new(config).unwrap()
}

/// `sluice topics list` against `address` with the TLS directory `dir`:
/// without a token, then with `token` in `SLUICE_TOKEN`.
fn cli(address: &str, dir: &Path, token: &str) -> (Output, Output) {
    let args = ["topics", "list", "--cluster", address, "--timeout", "5"];
    let without = sluice_with_env(&args, None, &[("SLUICE_TLS_DIR", dir)]);
    let with = std::process::Command::new(common::SLUICE)
        .args(args)
        .env("SLUICE_TLS_DIR", dir)
        .env("SLUICE_TOKEN", token)
        .output()
        .unwrap();
    (without, with)
}

async fn admin(node: &ClusterNode, op: SecurityOp) {
    let op = Op::Admin {
        principal: Principal::user("admin"),
        action: AdminAction::Security(op),
    };
    // Right after the cluster is initialised, the node may not lead yet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let written = loop {
        match node.bus().propose(op.clone()).await {
            Err(sluice_core::bus::BusError::NotLeader { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            written => break written.unwrap(),
        }
    };
    assert!(
        !matches!(written, sluice_model::state::Response::Error(_)),
        "{written:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_authenticate_and_wrong_revoked_or_malformed_ones_are_refused() {
    let run = async {
        let root = tempfile::tempdir().unwrap();
        let certs = root.path().join("certs");
        sluice_ok(
            &["certs", "--dir", certs.to_str().unwrap(), "--nodes", "1"],
            None,
        );
        let config = NodeConfig {
            tls: Some(Tls::load(TlsFiles::node(&certs, 1)).unwrap()),
            ..NodeConfig::new(1, "127.0.0.1:0".parse().unwrap(), root.path().join("n1"))
        };
        let node = ClusterNode::start(config).await.unwrap();
        let address = node.local_address();
        let members = BTreeMap::from([(1, sluice_core::raft::Node::new(address.to_string()))]);
        node.bus().initialize(members).await.unwrap();

        let token = Token::new([0x5a; 8], [0x17; 32]);
        let record = token.record("carol", [3; 16], 0).unwrap();
        admin(&node, SecurityOp::CreateToken(record)).await;

        let carol = token_client(&node, &certs, token.clone());
        let metadata = carol.metadata().await.unwrap();
        assert_eq!(metadata.node_id, 1);

        // Through the CLI, from the environment.
        let exposed = token.expose();
        let tokens_dir = root.path().join("token-only");
        std::fs::create_dir_all(&tokens_dir).unwrap();
        std::fs::copy(certs.join("ca.pem"), tokens_dir.join("ca.pem")).unwrap();
        let cli = |token: &str| {
            let (address, dir, token) = (address.to_string(), tokens_dir.clone(), token.to_owned());
            tokio::task::spawn_blocking(move || cli(&address, &dir, &token))
        };
        let (without, with) = cli(&exposed).await.unwrap();
        // A TLS directory without a certificate, and no token: refused
        // before connecting.
        assert!(!without.status.success());
        assert!(
            text(&without.stderr).contains("holds no client certificate"),
            "{}",
            text(&without.stderr)
        );
        assert!(with.status.success(), "{}", text(&with.stderr));

        // A wrong secret for a known id.
        let wrong = token_client(&node, &certs, Token::new([0x5a; 8], [0x18; 32]));
        let refused = wrong.metadata().await.unwrap_err();
        assert!(
            matches!(&refused, ClientError::Refused(message)
                if message.contains("unknown, revoked or wrong")),
            "{refused}"
        );

        // Malformed: refused before it is sent.
        let (_, malformed) = cli("sluice-token.nothex.00").await.unwrap();
        assert!(!malformed.status.success());
        assert!(
            text(&malformed.stderr).contains("not a Sluice token"),
            "{}",
            text(&malformed.stderr)
        );

        // Revoked: new connections are refused.
        admin(
            &node,
            SecurityOp::RevokeToken {
                id: token.id().to_owned(),
            },
        )
        .await;
        let again = token_client(&node, &certs, token.clone());
        let refused = again.request(&ClientRequest::Metadata).await.unwrap_err();
        assert!(
            matches!(&refused, ClientError::Refused(message)
                if message.contains("unknown, revoked or wrong")),
            "{refused}"
        );
        node.shutdown().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the test took longer than 60 s");
}
