//! The worker: one run, from the nodes' start to the verdict. In namespace
//! mode the supervisor starts it inside the clients' namespace (`ip netns
//! exec`), so every connection it opens to the nodes crosses the bridge
//! like a real client's; it starts the nodes in their own namespaces.
//!
//! Phases: start the nodes; initialise the cluster and create the topics;
//! run the workload while the nemesis follows its schedule; stop the
//! workload and heal everything; wait until every node has applied the
//! same log; read every topic from every node (the final reads); check
//! the history with the same checker the simulator uses; write
//! `history.jsonl`, `nemesis.jsonl`, `results.json`.
//!
//! Besides the checker's classes a run fails when a nemesis action failed
//! (`nemesis-actions`) or a chosen nemesis kind injected no fault
//! (`faults-injected`): a run whose faults did not happen proves nothing.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_client::client::{Client, ClientConfig};
use sluice_client::protocol::{ClientRequest, ClientResponse, Metadata};
use sluice_client::tls::{Tls, TlsFiles};
use sluice_jepsen::{AnomalyClass, FinalReadOp, Report};
use sluice_model::security::{Rule, SecurityOp};
use tokio::task::JoinSet;

use super::config::{Mode, WorkerConfig};
use super::nemesis::Nemesis;
use super::nodes::Nodes;
use super::proxy::Proxy;
use super::recorder::Recorder;
use super::schedule::{Schedule, Step};
use super::workload::{self, Context, INPUT, OUTPUT, PARTITIONS};

/// How long the cluster may take to converge after the final heal.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long workload tasks may take to finish their last operation.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What `results.json` holds besides the checker's report.
#[derive(Debug, Serialize)]
struct RunFacts {
    nodes: u64,
    seed: u64,
    time_limit_secs: u64,
    mode: Mode,
    nemesis: Vec<String>,
    planted_bug: Option<String>,
    request_timeout_secs: u64,
    workload_secs: f64,
    converged: bool,
    convergence: String,
    nemesis_actions: usize,
    nemesis_failed_actions: usize,
    /// Every failed nemesis action, as recorded.
    nemesis_failures: Vec<String>,
    /// Faults started successfully, per chosen kind (zero included).
    faults_injected: BTreeMap<String, u64>,
    node_exits_unexpected: Vec<(u64, String)>,
    /// Each node's highest resident set size over its processes, KiB.
    nodes_peak_rss_kib: BTreeMap<u64, u64>,
    /// The bytes in each node's data directory at the end.
    data_dir_bytes: BTreeMap<u64, u64>,
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    run: RunFacts,
    checks: Checks,
    report: &'a Report,
}

#[derive(Debug, Serialize)]
struct Checks {
    passed: u64,
    failed: u64,
    failed_names: Vec<String>,
}

/// Runs the worker; returns the process exit code.
pub(crate) fn run(config_path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|error| format!("{}: {error}", config_path.display()))?;
    let config: WorkerConfig = serde_json::from_str(&text)
        .map_err(|error| format!("{}: {error}", config_path.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("tokio: {error}"))?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: WorkerConfig) -> Result<i32, String> {
    let admin_tls = load_tls(TlsFiles::client(&config.tls_dir))?;
    let workload_tls = load_tls(TlsFiles::client(&config.tls_dir.join(WORKLOAD_PRINCIPAL)))?;
    let recorder = Arc::new(Recorder::new());
    let nodes = Arc::new(Nodes::new(config.clone()));
    let proxy = start_proxy(&config, &nodes).await?;
    nodes.start_all()?;
    let seeds = seeds(&config, &nodes);
    let admin = client(&seeds, &admin_tls, Duration::from_secs(30));
    initialise(&config, &admin).await?;
    eprintln!(
        "cluster of {} nodes initialised; topics created",
        config.nodes
    );

    let context = Context {
        recorder: Arc::clone(&recorder),
        seeds: seeds.clone(),
        tls: Arc::clone(&workload_tls),
        stop: Arc::new(AtomicBool::new(false)),
        seed: config.seed,
        request_timeout: Duration::from_secs(config.request_timeout_secs),
    };
    let mut nemesis = Nemesis::new(
        config.mode,
        Arc::clone(&nodes),
        proxy.clone(),
        Arc::clone(&recorder),
        client(&seeds, &admin_tls, Duration::from_secs(2)),
    );
    let workload_secs = run_workload(&config, &context, &mut nemesis, &admin, &seeds).await;

    let (converged, convergence) = converge(&admin, &seeds).await;
    eprintln!("convergence: {convergence}");
    nemesis.restart_exited();
    final_reads(&recorder, &seeds, &admin_tls).await;

    let footprint = (nodes.peak_rss_kib(), nodes.data_dir_bytes());
    let failed = judge(
        &config,
        &recorder,
        &nemesis,
        footprint,
        workload_secs,
        converged,
        convergence,
    )?;
    if let Some(proxy) = proxy {
        proxy.shutdown();
    }
    nodes.kill_all();
    eprintln!("run directory: {}", config.run_dir.display());
    Ok(if failed == 0 { 0 } else { 1 })
}

/// In loopback mode, the proxy that stands between the nodes (and lets
/// the nemesis cut their links); none in namespace mode.
async fn start_proxy(config: &WorkerConfig, nodes: &Nodes) -> Result<Option<Proxy>, String> {
    match config.mode {
        Mode::Loopback => {
            let routes = nodes
                .ids()
                .into_iter()
                .map(|id| (id, config.member_address(id), config.listen_address(id)))
                .collect();
            Ok(Some(Proxy::start(routes).await?))
        }
        Mode::Netns => Ok(None),
    }
}

/// The client addresses of every node.
fn seeds(config: &WorkerConfig, nodes: &Nodes) -> Vec<SocketAddr> {
    nodes
        .ids()
        .into_iter()
        .map(|id| config.listen_address(id))
        .collect()
}

/// Runs the workload while the nemesis follows the schedule, then stops
/// the workload, heals everything and lets the workload's last operations
/// finish; returns how long the workload ran, in seconds.
async fn run_workload(
    config: &WorkerConfig,
    context: &Context,
    nemesis: &mut Nemesis,
    admin: &Client,
    seeds: &[SocketAddr],
) -> f64 {
    let started = Instant::now();
    let tasks = spawn_workload(config, context);
    follow_schedule(config, nemesis, admin, seeds, started).await;
    context.stop.store(true, Ordering::Relaxed);
    let workload_secs = started.elapsed().as_secs_f64();
    nemesis.heal_all(config.skew()).await;
    drain(tasks).await;
    workload_secs
}

/// Checks the history, writes it, the nemesis records and
/// `results.json`, and prints the summary; returns how many checks
/// failed.
fn judge(
    config: &WorkerConfig,
    recorder: &Recorder,
    nemesis: &Nemesis,
    (nodes_peak_rss_kib, data_dir_bytes): (BTreeMap<u64, u64>, BTreeMap<u64, u64>),
    workload_secs: f64,
    converged: bool,
    convergence: String,
) -> Result<u64, String> {
    let history = recorder.history();
    let report = sluice_jepsen::check(&history);
    let nemesis_records = recorder.nemesis_records();
    write_outputs(&config.run_dir, &history, &nemesis_records)?;
    let faults_injected = config
        .kinds()
        .into_iter()
        .map(|kind| {
            let count = nemesis.injected.get(&kind).copied().unwrap_or(0);
            (kind.name().to_owned(), count)
        })
        .collect();
    let facts = RunFacts {
        nodes: config.nodes,
        seed: config.seed,
        time_limit_secs: config.time_limit_secs,
        mode: config.mode,
        nemesis: config.nemesis.clone(),
        planted_bug: config.planted_bug.clone(),
        request_timeout_secs: config.request_timeout_secs,
        workload_secs,
        converged,
        convergence,
        nemesis_actions: nemesis_records.len(),
        nemesis_failed_actions: nemesis_records.iter().filter(|r| !r.ok).count(),
        nemesis_failures: nemesis.failures.clone(),
        faults_injected,
        node_exits_unexpected: nemesis.unexpected_exits.clone(),
        nodes_peak_rss_kib,
        data_dir_bytes,
    };
    let checks = checks(&report, &facts);
    print_summary(&report, &facts, &checks);
    let results = Results {
        run: facts,
        checks,
        report: &report,
    };
    let path = config.run_dir.join("results.json");
    let json = serde_json::to_string_pretty(&results).map_err(|error| error.to_string())?;
    std::fs::write(&path, json).map_err(|error| format!("{}: {error}", path.display()))?;
    Ok(results.checks.failed)
}

fn client(seeds: &[SocketAddr], tls: &Arc<Tls>, timeout: Duration) -> Client {
    let mut config = ClientConfig::new(seeds.to_vec());
    config.tls = Some(Arc::clone(tls));
    config.request_timeout = timeout;
    config.attempt_timeout = Duration::from_secs(1);
    Client::new(config).expect("seeds are given")
}

/// `sluice cluster init`, through the client library: retried while the
/// nodes start listening; then the topics.
async fn initialise(config: &WorkerConfig, admin: &Client) -> Result<(), String> {
    let members: Vec<(u64, String)> = (1..=config.nodes)
        .map(|id| (id, config.member_address(id).to_string()))
        .collect();
    let first = config.listen_address(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = ClientRequest::Initialize {
            members: members.clone(),
        };
        match admin.request_from(first, &request).await {
            Ok(ClientResponse::Done) => break,
            outcome if Instant::now() > deadline => {
                return Err(format!(
                    "cluster init kept failing: {outcome:?}; see node-1.log"
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    workload::create_topics(admin)
        .await
        .map_err(|error| format!("creating the topics: {error}"))?;
    allow_workload(admin).await
}

/// The principal the workload runs as: not a superuser, so every request
/// it makes passes the access rules.
const WORKLOAD_PRINCIPAL: &str = "jepsen";

/// The rules the workload needs, and no more: publish and consume on the
/// topics, consume on the groups. Proposed by the admin, so each is an
/// admin-trail entry.
async fn allow_workload(admin: &Client) -> Result<(), String> {
    let principal = format!("User:{WORKLOAD_PRINCIPAL}");
    for (resource, operation) in [
        ("topic:*", "publish"),
        ("topic:*", "consume"),
        ("group:*", "consume"),
    ] {
        let rule = Rule::parse(&principal, resource, operation, "allow")
            .map_err(|error| format!("the workload's rule: {error}"))?;
        admin
            .security(SecurityOp::AddRule(rule))
            .await
            .map_err(|error| format!("allowing the workload {operation} on {resource}: {error}"))?;
    }
    Ok(())
}

fn load_tls(files: TlsFiles) -> Result<Arc<Tls>, String> {
    Tls::load(files).map_err(|error| format!("the run's TLS material: {error}"))
}

fn spawn_workload(config: &WorkerConfig, context: &Context) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for index in 0..config.producers {
        tasks.spawn(workload::producer(context.clone(), index));
    }
    for index in 0..config.consumers {
        tasks.spawn(workload::consumer(context.clone(), index));
    }
    for index in 0..config.transactors {
        tasks.spawn(workload::transactor(context.clone(), index));
    }
    tasks
}

/// Applies the schedule's steps at their times until the time limit.
async fn follow_schedule(
    config: &WorkerConfig,
    nemesis: &mut Nemesis,
    admin: &Client,
    seeds: &[SocketAddr],
    started: Instant,
) {
    let schedule = Schedule::new(
        config.seed,
        &config.kinds(),
        config.nodes,
        config.time_limit(),
    );
    for (due, step) in &schedule.steps {
        tokio::time::sleep_until((started + *due).into()).await;
        match step {
            Step::Start(fault) => {
                let leader = leader(admin, seeds).await;
                nemesis.start(fault, leader).await;
            }
            Step::Heal(fault) => nemesis.heal(fault).await,
        }
    }
    tokio::time::sleep_until((started + config.time_limit()).into()).await;
}

/// The node that says it leads, asked one by one (at most a second each),
/// in up to [`LEADER_ROUNDS`] rounds while an election runs.
async fn leader(admin: &Client, seeds: &[SocketAddr]) -> Option<u64> {
    for round in 0..LEADER_ROUNDS {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for &address in seeds {
            if let Ok(ClientResponse::Metadata(metadata)) =
                admin.request_from(address, &ClientRequest::Metadata).await
            {
                if metadata.role == "leader" {
                    return Some(metadata.node_id);
                }
            }
        }
    }
    None
}

/// Rounds of asking every node whether it leads, before a fault aimed at
/// the leader falls back to its seeded node.
const LEADER_ROUNDS: u32 = 3;

async fn drain(mut tasks: JoinSet<()>) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                // Operations still waiting stay without completion: the
                // checker counts them as indeterminate.
                eprintln!(
                    "{} workload tasks did not finish in time; aborted",
                    tasks.len()
                );
                tasks.abort_all();
                return;
            }
        }
    }
}

/// Waits until one leader is known to all and every node has applied
/// everything the leader committed after a barrier write.
async fn converge(admin: &Client, seeds: &[SocketAddr]) -> (bool, String) {
    let started = Instant::now();
    let mut last = String::from("no attempt");
    while started.elapsed() < CONVERGENCE_TIMEOUT {
        // A write in the current term, so the leader's commit index covers
        // every earlier entry.
        if let Err(error) = workload::create_topics(admin).await {
            last = format!("barrier write failed: {error}");
            continue;
        }
        let mut views: Vec<Metadata> = Vec::new();
        for &address in seeds {
            match admin.request_from(address, &ClientRequest::Metadata).await {
                Ok(ClientResponse::Metadata(metadata)) => views.push(metadata),
                other => last = format!("{address}: {other:?}"),
            }
        }
        if views.len() == seeds.len() {
            let leaders: Vec<_> = views
                .iter()
                .map(|m| m.leader.as_ref().map(|l| l.0))
                .collect();
            let applied: Vec<_> = views.iter().map(|m| m.log.2).collect();
            let committed = views
                .iter()
                .find(|m| m.role == "leader")
                .and_then(|m| m.log.1);
            if leaders.iter().all(|l| l.is_some() && *l == leaders[0])
                && committed.is_some()
                && applied.iter().all(|a| *a >= committed)
            {
                return (
                    true,
                    format!(
                        "converged in {:.1} s: leader {:?}, applied {:?}",
                        started.elapsed().as_secs_f64(),
                        leaders[0],
                        applied
                    ),
                );
            }
            last =
                format!("leaders {leaders:?}, applied {applied:?}, leader committed {committed:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (
        false,
        format!("did not converge within {CONVERGENCE_TIMEOUT:?}: {last}"),
    )
}

/// Reads both topics from every node, each partition from its first
/// retained offset to its end; one `final_read` op per (node, topic).
async fn final_reads(recorder: &Recorder, seeds: &[SocketAddr], tls: &Arc<Tls>) {
    let reader = client(seeds, tls, Duration::from_secs(10));
    for &address in seeds {
        for topic in [INPUT, OUTPUT] {
            let process = recorder.new_process();
            let read = FinalReadOp::new::<sluice_jepsen::Event>(topic, []);
            recorder.invoke(process, read.clone());
            match read_topic(&reader, address, topic).await {
                Ok(events) => recorder.ok(process, FinalReadOp { events, ..read }),
                Err(error) => {
                    eprintln!("final read of {topic} from {address} failed: {error}");
                    recorder.fail(process, read);
                }
            }
        }
    }
}

async fn read_topic(
    reader: &Client,
    address: SocketAddr,
    topic: &str,
) -> Result<Vec<sluice_jepsen::Event>, String> {
    let mut events = Vec::new();
    for partition in 0..PARTITIONS {
        let mut offset = 0;
        loop {
            let request = ClientRequest::Fetch {
                topic: topic.to_owned(),
                partition,
                offset,
                max: 10_000,
                wait_ms: 0,
            };
            match reader.request_from(address, &request).await {
                Ok(ClientResponse::Fetched {
                    events: fetched,
                    next,
                    range,
                }) => {
                    for event in &fetched {
                        events.push(sluice_jepsen::Event::new(
                            partition,
                            event.offset,
                            String::from_utf8_lossy(&event.payload).into_owned(),
                        ));
                    }
                    if next >= range.1 || fetched.is_empty() {
                        break;
                    }
                    offset = next;
                }
                other => return Err(format!("{other:?}")),
            }
        }
    }
    Ok(events)
}

fn write_outputs(
    run_dir: &Path,
    history: &sluice_jepsen::History,
    nemesis: &[super::recorder::NemesisRecord],
) -> Result<(), String> {
    let path = run_dir.join("history.jsonl");
    let file =
        std::fs::File::create(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    history
        .to_jsonl(BufWriter::new(file))
        .map_err(|error| format!("{}: {error}", path.display()))?;
    let path = run_dir.join("nemesis.jsonl");
    let mut lines = String::new();
    for record in nemesis {
        lines.push_str(&serde_json::to_string(record).map_err(|error| error.to_string())?);
        lines.push('\n');
    }
    std::fs::write(&path, lines).map_err(|error| format!("{}: {error}", path.display()))
}

/// One check per failure class of the checker, plus convergence, plus the
/// nemesis: no action failed, and every chosen kind injected a fault.
fn checks(report: &Report, facts: &RunFacts) -> Checks {
    let mut passed = 0;
    let mut failed_names = Vec::new();
    for class in AnomalyClass::ALL.into_iter().filter(|c| c.is_failure()) {
        if report.count(class) == 0 {
            passed += 1;
        } else {
            failed_names.push(class.name().to_owned());
        }
    }
    let nemesis = [
        ("convergence", facts.converged),
        ("nemesis-actions", facts.nemesis_failures.is_empty()),
        (
            "faults-injected",
            facts.faults_injected.values().all(|&count| count > 0),
        ),
    ];
    for (name, ok) in nemesis {
        if ok {
            passed += 1;
        } else {
            failed_names.push(name.to_owned());
        }
    }
    Checks {
        passed,
        failed: failed_names.len() as u64,
        failed_names,
    }
}

fn print_summary(report: &Report, facts: &RunFacts, checks: &Checks) {
    println!(
        "run: {} nodes, seed {}, {:.0} s of workload, {:?} mode, nemesis [{}]{}",
        facts.nodes,
        facts.seed,
        facts.workload_secs,
        facts.mode,
        facts.nemesis.join(","),
        facts
            .planted_bug
            .as_ref()
            .map(|bug| format!(", planted bug {bug}"))
            .unwrap_or_default()
    );
    println!(
        "nemesis: {} actions ({} failed); nodes that exited on their own: {}",
        facts.nemesis_actions,
        facts.nemesis_failed_actions,
        facts.node_exits_unexpected.len()
    );
    for failure in &facts.nemesis_failures {
        println!("  failed: {failure}");
    }
    println!("{:<24} {:>10}", "nemesis kind", "injected");
    for (kind, count) in &facts.faults_injected {
        let verdict = if *count == 0 {
            "  (none: fails the run)"
        } else {
            ""
        };
        println!("{kind:<24} {count:>10}{verdict}");
    }
    println!("convergence: {}", facts.convergence);
    let mib = |values: &BTreeMap<u64, u64>, unit: f64| {
        let shown: Vec<String> = values
            .iter()
            .map(|(id, value)| format!("{id}: {:.1}", *value as f64 / unit))
            .collect();
        shown.join(", ")
    };
    println!(
        "nodes: peak RSS MiB [{}]; data directories MiB [{}]",
        mib(&facts.nodes_peak_rss_kib, 1024.0),
        mib(&facts.data_dir_bytes, 1024.0 * 1024.0)
    );
    print!("{report}");
    for class in report.failures() {
        for example in report.examples(class).iter().take(3) {
            println!("  {class}: {}", example.message);
        }
    }
    if checks.failed_names.is_empty() {
        println!("{} passed, {} failed", checks.passed, checks.failed);
    } else {
        println!(
            "{} passed, {} failed: {}",
            checks.passed,
            checks.failed,
            checks.failed_names.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(failures: &[&str], injected: &[(&str, u64)], converged: bool) -> RunFacts {
        RunFacts {
            nodes: 3,
            seed: 1,
            time_limit_secs: 60,
            mode: Mode::Loopback,
            nemesis: injected.iter().map(|(kind, _)| kind.to_string()).collect(),
            planted_bug: None,
            request_timeout_secs: 10,
            workload_secs: 60.0,
            converged,
            convergence: String::new(),
            nemesis_actions: 10,
            nemesis_failed_actions: failures.len(),
            nemesis_failures: failures.iter().map(|f| f.to_string()).collect(),
            faults_injected: injected
                .iter()
                .map(|(kind, count)| (kind.to_string(), *count))
                .collect(),
            node_exits_unexpected: Vec::new(),
            nodes_peak_rss_kib: BTreeMap::new(),
            data_dir_bytes: BTreeMap::new(),
        }
    }

    #[test]
    fn a_failed_nemesis_action_or_a_chosen_kind_without_a_fault_fails_the_run() {
        let report = sluice_jepsen::check(&sluice_jepsen::History::default());
        assert!(report.valid);
        let clean = checks(&report, &facts(&[], &[("kill", 2), ("skew", 1)], true));
        assert_eq!((clean.failed, clean.failed_names.len()), (0, 0));
        let failed_action = facts(
            &["start one-way: drop packets from node 1 to node 2 (failed: no iptables)"],
            &[("kill", 2), ("one-way", 1)],
            true,
        );
        assert_eq!(
            checks(&report, &failed_action).failed_names,
            ["nemesis-actions"]
        );
        let no_skew = facts(&[], &[("kill", 2), ("skew", 0)], true);
        assert_eq!(checks(&report, &no_skew).failed_names, ["faults-injected"]);
        let unconverged = checks(&report, &facts(&[], &[], false));
        assert_eq!(unconverged.failed_names, ["convergence"]);
        assert_eq!(clean.passed, unconverged.passed + 1);
    }
}
