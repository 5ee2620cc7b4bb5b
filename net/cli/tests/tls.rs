//! TLS with real `sluice node` processes on loopback, certificates from
//! `sluice certs`:
//! - a proxy between a client and a node records every byte: with TLS no
//!   payload or key appears in it, without TLS both do;
//! - certificates from an unknown CA, expired or revoked (a revocation
//!   list written while the node runs), and certificates used for what
//!   their principal may not do (a client's for Raft messages, a node's
//!   claiming another id) are refused, and the node logs each refusal;
//! - certificates rotated on disk while clients publish: nothing lost,
//!   nothing duplicated, offsets without gaps, and new connections get the
//!   new certificates.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use sluice_client::tcp::{TcpConfig, TcpTransport};
use sluice_client::tls::{Tls, TlsFiles};
use sluice_model::transport::{MessageKind, Request, Transport, TransportError};

use common::{Nodes, sluice_ok, sluice_with_env, text};

const KEY_MARKER: &str = "key-marker-5b1f0c9e";
const PAYLOAD_MARKER: &str = "payload-marker-c0ffee77";

/// Forwards connections to a node and records every byte, both ways.
struct Proxy {
    address: String,
    recorded: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address").to_string();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&recorded);
        let target = target.to_owned();
        // Ends with the test process; every connection ends when either
        // side closes it.
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { return };
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                for (from, to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    let record = Arc::clone(&record);
                    std::thread::spawn(move || copy_recording(from, to, &record));
                }
            }
        });
        Proxy { address, recorded }
    }

    fn recorded(&self) -> Vec<u8> {
        self.recorded.lock().unwrap().clone()
    }
}

fn copy_recording(mut from: TcpStream, mut to: TcpStream, record: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                record.lock().unwrap().extend_from_slice(&buf[..read]);
                if to.write_all(&buf[..read]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Publishes one marked event through a proxy and reads it back through
/// it; returns every byte the proxy saw.
fn traffic_through_a_proxy(nodes: &Nodes) -> Vec<u8> {
    nodes.init();
    nodes.create_topic("secrets", 1);
    let proxy = Proxy::start(&nodes.addresses[&1]);
    let line = format!("{KEY_MARKER}\t{PAYLOAD_MARKER}\n");
    let published = nodes.sluice(
        &["publish", "secrets", "--cluster", &proxy.address],
        Some(&line),
    );
    assert!(published.status.success(), "{}", text(&published.stderr));
    assert_eq!(text(&published.stdout).trim(), "1 of 1 events acknowledged");
    let tailed = nodes.sluice(
        &[
            "tail",
            "secrets",
            "--cluster",
            &proxy.address,
            "--from-beginning",
            "--idle-exit",
            "1",
        ],
        None,
    );
    assert!(tailed.status.success(), "{}", text(&tailed.stderr));
    assert!(
        text(&tailed.stdout).contains(PAYLOAD_MARKER),
        "{}",
        text(&tailed.stdout)
    );
    proxy.recorded()
}

#[test]
fn a_proxy_sees_no_payload_or_key_with_tls_and_sees_both_without() {
    let plain = traffic_through_a_proxy(&Nodes::start(&[1]));
    assert!(contains(&plain, PAYLOAD_MARKER), "the check can fail");
    assert!(contains(&plain, KEY_MARKER), "the check can fail");

    let secured = traffic_through_a_proxy(&Nodes::start_tls(&[1]));
    assert!(
        secured.len() > 2 * (KEY_MARKER.len() + PAYLOAD_MARKER.len()),
        "the proxy carried the traffic: {} bytes",
        secured.len()
    );
    // A TLS handshake record opens the connection.
    assert_eq!(&secured[..2], &[0x16, 0x03]);
    assert!(!contains(&secured, PAYLOAD_MARKER));
    assert!(!contains(&secured, KEY_MARKER));
}

/// Waits up to 10 s for node `id`'s log to contain every one of `needles`.
fn log_shows(nodes: &Nodes, id: u64, needles: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = nodes.log(id);
        if needles.iter().all(|needle| log.contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id}'s log lacks {needles:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sluice topics list` as the client whose TLS directory is `dir`.
fn list_topics(nodes: &Nodes, dir: &Path) -> std::process::Output {
    sluice_with_env(
        &[
            "topics",
            "list",
            "--cluster",
            &nodes.addresses[&1],
            "--timeout",
            "5",
        ],
        None,
        &[("SLUICE_TLS_DIR", dir)],
    )
}

fn refused(nodes: &Nodes, dir: &Path) -> String {
    let output = list_topics(nodes, dir);
    assert!(
        !output.status.success(),
        "admitted: {}",
        text(&output.stdout)
    );
    text(&output.stderr)
}

/// An expired client certificate for `name`, signed by the CA in `certs`,
/// in a TLS directory of its own.
fn expired_client(certs: &Path, name: &str) -> PathBuf {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let read = |file: &str| std::fs::read_to_string(certs.join(file)).unwrap();
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")).unwrap();
    let ca = CertificateParams::from_ca_cert_pem(&read("ca.pem"))
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let dir = certs.join(format!("expired-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), read("ca.pem")).unwrap();
    std::fs::write(dir.join("client.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("client-key.pem"), key.serialize_pem()).unwrap();
    dir
}

#[test]
fn refused_certificates_and_principals_are_logged() {
    let nodes = Nodes::start_tls(&[1]);
    // As `admin` (the node's superuser): the next `certs` run makes
    // `alice` the directory's default client.
    nodes.init();
    let certs = nodes.tls_dir.clone().expect("TLS");
    let dir = certs.to_str().unwrap();
    sluice_ok(
        &[
            "certs",
            "--dir",
            dir,
            "--nodes",
            "2",
            "--clients",
            "alice,bob",
        ],
        None,
    );
    for name in ["alice", "bob"] {
        let output = list_topics(&nodes, &certs.join(name));
        assert!(output.status.success(), "{}", text(&output.stderr));
    }

    // Another CA's client certificate (trusting our CA, so that it
    // reaches the node's check).
    let other = nodes.root.path().join("other");
    let other_dir = other.to_str().unwrap();
    sluice_ok(&["certs", "--dir", other_dir, "--clients", "mallory"], None);
    std::fs::copy(certs.join("ca.pem"), other.join("mallory/ca.pem")).unwrap();
    let stderr = refused(&nodes, &other.join("mallory"));
    assert!(stderr.contains("refused"), "{stderr}");
    log_shows(&nodes, 1, &["refused a TLS connection", "UnknownIssuer"]);

    let stderr = refused(&nodes, &expired_client(&certs, "old"));
    assert!(stderr.contains("refused"), "{stderr}");
    log_shows(
        &nodes,
        1,
        &["refused a TLS connection", "certificate expired"],
    );

    // Revoked while the node runs: the node picks the list up by itself.
    sluice_ok(&["certs", "revoke", "--dir", dir, "--client", "bob"], None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_topics(&nodes, &certs.join("bob")).status.success() {
        assert!(Instant::now() < deadline, "bob is still admitted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let stderr = refused(&nodes, &certs.join("bob"));
    assert!(stderr.contains("Revoked"), "{stderr}");
    log_shows(&nodes, 1, &["reloaded the TLS material", "Revoked"]);
    let alice = list_topics(&nodes, &certs.join("alice"));
    assert!(alice.status.success(), "{}", text(&alice.stderr));

    // Raft messages from a client certificate, and from node 2's
    // certificate claiming to be node 3.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let address = nodes.addresses[&1].parse().unwrap();
    let vote = |source, files: TlsFiles| {
        let transport = TcpTransport::new(
            source,
            TcpConfig {
                tls: Some(Tls::load(files).unwrap()),
                ..TcpConfig::default()
            },
        );
        transport.set_address(1, address);
        let request = Request {
            kind: MessageKind::Vote as u8,
            group: 0,
            body: Bytes::from_static(b"not a vote"),
        };
        runtime.block_on(transport.call(1, request)).unwrap_err()
    };
    let refusal = vote(1, TlsFiles::client(&certs.join("alice")));
    assert!(
        matches!(&refusal, TransportError::Remote { message, .. }
            if message.contains("User:alice may not send Raft messages as node 1")),
        "{refusal}"
    );
    log_shows(
        &nodes,
        1,
        &["refused a Raft message", "principal=User:alice"],
    );
    let refusal = vote(3, TlsFiles::node(&certs, 2));
    assert!(
        matches!(&refusal, TransportError::Remote { message, .. }
            if message.contains("Node:2 may not send Raft messages as node 3")),
        "{refusal}"
    );
    log_shows(&nodes, 1, &["principal=Node:2"]);
}

/// The certificate node `id` presents to a new connection now.
fn presented(nodes: &Nodes, id: u64) -> CertificateDer<'static> {
    let certs = nodes.tls_dir.clone().expect("TLS");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let address: std::net::SocketAddr = nodes.addresses[&id].parse().unwrap();
    runtime.block_on(async {
        let tls = Tls::load(TlsFiles::client(&certs)).unwrap();
        let connector = tokio_rustls::TlsConnector::from(tls.client_config());
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let name = ServerName::IpAddress(address.ip().into());
        let stream = connector.connect(name, tcp).await.unwrap();
        stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    })
}

#[test]
fn certificates_rotated_during_a_publish_loop_lose_and_duplicate_nothing() {
    let nodes = Nodes::start_tls(&[1, 2, 3]);
    let certs = nodes.tls_dir.clone().expect("TLS");
    nodes.init();
    nodes.create_topic("rotated", 2);
    let before = presented(&nodes, 1);
    let node_1 = nodes.children[&1].id().to_string();

    // Renew every node's certificate three times while clients publish,
    // and send node 1 a SIGHUP once.
    let dir = certs.to_str().unwrap().to_owned();
    let rotation = std::thread::spawn(move || {
        for round in 0..3 {
            std::thread::sleep(Duration::from_millis(700));
            sluice_ok(
                &["certs", "--dir", &dir, "--nodes", "1,2,3", "--clients", ""],
                None,
            );
            if round == 1 {
                let hup = std::process::Command::new("kill")
                    .args(["-HUP", &node_1])
                    .status()
                    .unwrap();
                assert!(hup.success());
            }
        }
    });
    let cluster = nodes.cluster();
    let mut published = 0usize;
    let mut rounds = 0;
    while rounds < 8 || !rotation.is_finished() {
        assert!(rounds < 200, "the rotation did not finish");
        let lines: String = (published..published + 40)
            .map(|i| format!("k{i}\tv{i}\n"))
            .collect();
        let output = nodes.sluice(
            &["publish", "rotated", "--cluster", &cluster, "--batch", "8"],
            Some(&lines),
        );
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert_eq!(text(&output.stdout).trim(), "40 of 40 events acknowledged");
        published += 40;
        rounds += 1;
    }
    rotation.join().unwrap();

    let tailed = nodes.sluice(
        &[
            "tail",
            "rotated",
            "--cluster",
            &cluster,
            "--from-beginning",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    );
    assert!(tailed.status.success(), "{}", text(&tailed.stderr));
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut offsets: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for line in text(&tailed.stdout).lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let partition = event["partition"].as_u64().unwrap();
        offsets
            .entry(partition)
            .or_default()
            .push(event["offset"].as_u64().unwrap());
        *seen
            .entry(event["payload"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for i in 0..published {
        assert_eq!(seen.get(&format!("v{i}")), Some(&1), "event v{i}");
    }
    assert_eq!(seen.len(), published);
    for (partition, mut offsets) in offsets {
        offsets.sort_unstable();
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, expected, "offsets of partition {partition}");
    }

    // Every node reloaded, and new connections get the new certificates.
    for id in [1, 2, 3] {
        log_shows(&nodes, id, &["reloaded the TLS material"]);
    }
    log_shows(&nodes, 1, &["why=\"SIGHUP\""]);
    std::thread::sleep(Duration::from_millis(1500));
    for id in [1, 2, 3] {
        let on_disk = CertificateDer::from_pem_file(certs.join(format!("node-{id}.pem"))).unwrap();
        assert_eq!(presented(&nodes, id), on_disk, "node {id}");
    }
    assert_ne!(presented(&nodes, 1), before);
}
