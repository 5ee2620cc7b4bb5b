//! The nemesis: carries out the schedule's faults and heals on the running
//! cluster and records each action (in the history and `nemesis.jsonl`).
//!
//! Network faults go through iptables `INPUT` rules inside the receiving
//! node's namespace (namespace mode) or through the proxy (loopback mode);
//! a heal flushes them all. Process faults use signals; skew rewrites the
//! node's libfaketime file; a full disk is a filler file written into the
//! node's tmpfs data directory until `ENOSPC`, and its heal removes the
//! filler and restarts the node, as an operator would after freeing space.
//! After every heal, a node that exited on its own is recorded (a `note`)
//! and restarted.
//!
//! No fault may pretend: an action whose command fails is recorded as
//! failed (and fails the run); a skew counts only once the node's own
//! wall clock (its metadata's `wall_clock_ms`) is seen off by the offset
//! asked for; a fault aimed at the leader when none is known hits the
//! schedule's fallback node instead of nobody. The faults injected are
//! counted per kind ([`Nemesis::injected`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use sluice_client::client::Client;
use sluice_client::protocol::{ClientRequest, ClientResponse};

use super::config::Mode;
use super::netns;
use super::nodes::Nodes;
use super::proxy::{Faults, Proxy};
use super::recorder::Recorder;
use super::schedule::{Fault, Kind, Target};

/// The nemesis of one run.
#[derive(Debug)]
pub(crate) struct Nemesis {
    mode: Mode,
    nodes: Arc<Nodes>,
    proxy: Option<Proxy>,
    recorder: Arc<Recorder>,
    /// Nodes a started fault hit, resolved (the leader named).
    active: Vec<u64>,
    /// Nodes that exited on their own during the run.
    pub(crate) unexpected_exits: Vec<(u64, String)>,
    /// Faults started successfully, per kind.
    pub(crate) injected: BTreeMap<Kind, u64>,
    /// Every action that failed, as recorded.
    pub(crate) failures: Vec<String>,
    /// Asks nodes for their wall clock.
    prober: Client,
    /// Nodes whose wall clock is moved now, and by how much (seconds).
    skewed: BTreeMap<u64, i64>,
}

/// Where the filler of a full-disk fault goes.
const FILLER: &str = "nemesis-filler";

/// How long a moved wall clock may take to show in the node's answers
/// (libfaketime re-reads its file every second).
const SKEW_VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// How far a node's wall clock may be from the offset asked for, beyond
/// half the round trip of the question.
const SKEW_TOLERANCE_MS: i64 = 1_000;

/// The pause between two questions about a node's wall clock.
const SKEW_VERIFY_PAUSE: Duration = Duration::from_millis(250);

impl Nemesis {
    /// A nemesis over `nodes`; `proxy` in loopback mode; `prober` asks
    /// the nodes for their wall clock.
    pub(crate) fn new(
        mode: Mode,
        nodes: Arc<Nodes>,
        proxy: Option<Proxy>,
        recorder: Arc<Recorder>,
        prober: Client,
    ) -> Nemesis {
        Nemesis {
            mode,
            nodes,
            proxy,
            recorder,
            active: Vec::new(),
            unexpected_exits: Vec::new(),
            injected: BTreeMap::new(),
            failures: Vec::new(),
            prober,
            skewed: BTreeMap::new(),
        }
    }

    /// Starts `fault`; `leader` is the node that leads now, if known.
    pub(crate) async fn start(&mut self, fault: &Fault, leader: Option<u64>) {
        let kind = fault.kind();
        let (action, result) = match fault {
            Fault::Partition { left, right, .. } => self.start_partition(left, right, leader),
            Fault::OneWay { from, to } => {
                self.active = vec![*from, *to];
                (
                    format!("drop packets from node {from} to node {to}"),
                    self.cut(&[(*from, *to)]),
                )
            }
            Fault::Loss { nodes, percent } => {
                self.active = nodes.clone();
                (
                    format!("nodes {nodes:?} drop {percent}% of packets from peers"),
                    self.loss(nodes, *percent),
                )
            }
            Fault::Kill(target) => {
                let ids = resolve(target, leader);
                self.active = ids.clone();
                let result = ids.iter().try_for_each(|&id| self.nodes.kill(id));
                (format!("kill -9 nodes {ids:?}"), result)
            }
            Fault::Pause(target) => {
                let ids = resolve(target, leader);
                self.active = ids.clone();
                let result = ids
                    .iter()
                    .try_for_each(|&id| self.nodes.signal(id, Signal::SIGSTOP));
                (format!("SIGSTOP nodes {ids:?}"), result)
            }
            Fault::Skew { node, seconds } => {
                self.active = vec![*node];
                let action = format!("node {node}'s wall clock moves by {seconds:+} s");
                match self.skew(*node, *seconds).await {
                    Ok(measured) => (format!("{action} ({measured})"), Ok(())),
                    Err(error) => (action, Err(error)),
                }
            }
            Fault::Disk(node) => {
                self.active = vec![*node];
                (
                    format!("fill node {node}'s data directory"),
                    self.fill(*node),
                )
            }
        };
        if result.is_ok() {
            *self.injected.entry(kind).or_insert(0) += 1;
        }
        self.record("start", Some(kind), action, result);
    }

    /// Cuts `left` from `right` both ways; a leader on the left is cut
    /// from every other node. Returns the action and its result.
    fn start_partition(
        &mut self,
        left: &Target,
        right: &[u64],
        leader: Option<u64>,
    ) -> (String, Result<(), String>) {
        let isolates_leader = matches!(left, Target::Leader { .. });
        let left = resolve(left, leader);
        let right: Vec<u64> = if isolates_leader {
            self.nodes
                .ids()
                .into_iter()
                .filter(|id| !left.contains(id))
                .collect()
        } else {
            right.to_vec()
        };
        let cuts = both_ways(&left, &right);
        self.active = left.iter().chain(&right).copied().collect();
        (format!("cut {left:?} from {right:?}"), self.cut(&cuts))
    }

    /// Heals `fault` (started by the last [`Nemesis::start`]).
    pub(crate) async fn heal(&mut self, fault: &Fault) {
        let kind = fault.kind();
        let active = std::mem::take(&mut self.active);
        let (action, result) = match fault {
            Fault::Partition { .. } | Fault::OneWay { .. } | Fault::Loss { .. } => {
                ("flush every network rule".to_owned(), self.heal_network())
            }
            Fault::Kill(_) => (
                format!("restart nodes {active:?}"),
                active.iter().try_for_each(|&id| self.nodes.start(id)),
            ),
            Fault::Pause(_) => (
                format!("SIGCONT nodes {active:?}"),
                active
                    .iter()
                    .try_for_each(|&id| self.nodes.signal(id, Signal::SIGCONT)),
            ),
            Fault::Skew { node, .. } => {
                let action = format!("node {node}'s wall clock back to true time");
                match self.skew(*node, 0).await {
                    Ok(measured) => (format!("{action} ({measured})"), Ok(())),
                    Err(error) => (action, Err(error)),
                }
            }
            Fault::Disk(node) => (
                format!("free node {node}'s data directory and restart it"),
                self.unfill(*node),
            ),
        };
        self.record("heal", Some(kind), action, result);
        self.restart_exited();
    }

    /// Heals everything, whatever is in force (the end of a run).
    pub(crate) async fn heal_all(&mut self, skew: bool) {
        let mut result = self.heal_network();
        for id in self.nodes.ids() {
            let _ = self.nodes.signal(id, Signal::SIGCONT);
            let filler = filler_path(&self.nodes, id);
            if filler.exists() {
                result = result.and(self.unfill(id));
            }
        }
        if skew {
            for id in self.nodes.ids() {
                result = result.and(self.nodes.set_skew(id, 0));
            }
            // A clock still moved is verified back; the others were never
            // moved, or were verified back by their heal.
            let moved: Vec<u64> = self.skewed.keys().copied().collect();
            for id in moved {
                result = result.and(self.skew(id, 0).await.map(drop));
            }
        }
        self.active.clear();
        self.record("heal", None, "heal everything".to_owned(), result);
        self.restart_exited();
    }

    /// Restarts nodes that exited on their own, recording each.
    pub(crate) fn restart_exited(&mut self) {
        for (id, status) in self.nodes.exited() {
            let result = self.nodes.start(id);
            self.record(
                "note",
                None,
                format!("node {id} had exited on its own ({status}); restarted"),
                result,
            );
            self.unexpected_exits.push((id, status));
        }
        for id in self.nodes.ids() {
            if !self.nodes.is_running(id) && !self.active.contains(&id) {
                let result = self.nodes.start(id);
                self.record(
                    "note",
                    None,
                    format!("node {id} was down; restarted"),
                    result,
                );
            }
        }
    }

    fn record(
        &mut self,
        phase: &'static str,
        kind: Option<Kind>,
        action: String,
        result: Result<(), String>,
    ) {
        let ok = result.is_ok();
        let action = match result {
            Ok(()) => action,
            Err(error) => format!("{action} (failed: {error})"),
        };
        let line = format!("{phase} {}: {action}", kind.map_or("-", Kind::name));
        eprintln!("nemesis: {line}");
        if !ok {
            self.failures.push(line);
        }
        self.recorder
            .nemesis(phase, kind.map(Kind::name), action, ok);
    }

    /// Moves node `id`'s wall clock to `seconds` from true time and waits
    /// until the node's own answers show it; returns what was measured.
    async fn skew(&mut self, id: u64, seconds: i64) -> Result<String, String> {
        self.nodes.set_skew(id, seconds)?;
        if seconds == 0 {
            self.skewed.remove(&id);
        } else {
            self.skewed.insert(id, seconds);
        }
        let address = self.nodes.listen_address(id);
        let wanted_ms = seconds.saturating_mul(1_000);
        let deadline = Instant::now() + SKEW_VERIFY_TIMEOUT;
        loop {
            let before = unix_ms(SystemTime::now());
            let answer = self
                .prober
                .request_from(address, &ClientRequest::Metadata)
                .await;
            let after = unix_ms(SystemTime::now());
            let last = match answer {
                Ok(ClientResponse::Metadata(metadata)) => {
                    let offset_ms = metadata.wall_clock_ms as i64 - (before + after) / 2;
                    let slack_ms = SKEW_TOLERANCE_MS + (after - before) / 2;
                    let measured = format!("measured {:+.1} s", offset_ms as f64 / 1_000.0);
                    if (offset_ms - wanted_ms).abs() <= slack_ms {
                        return Ok(measured);
                    }
                    measured
                }
                other => format!("{other:?}"),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {id}'s wall clock is not {seconds:+} s from true time after \
                     {SKEW_VERIFY_TIMEOUT:?} ({last}): is libfaketime loaded into the node?"
                ));
            }
            tokio::time::sleep(SKEW_VERIFY_PAUSE).await;
        }
    }

    /// Stalls or drops traffic on each directed (from, to) link.
    fn cut(&self, links: &[(u64, u64)]) -> Result<(), String> {
        match (&self.mode, &self.proxy) {
            (Mode::Loopback, Some(proxy)) => {
                proxy.update(|faults| faults.blocked.extend(links.iter().copied()));
                Ok(())
            }
            _ => links.iter().try_for_each(|&(from, to)| {
                iptables(
                    to,
                    &[
                        "-A",
                        "INPUT",
                        "-s",
                        &netns::node_ip(from).to_string(),
                        "-j",
                        "DROP",
                    ],
                )
            }),
        }
    }

    fn loss(&self, receivers: &[u64], percent: u32) -> Result<(), String> {
        match (&self.mode, &self.proxy) {
            (Mode::Loopback, Some(proxy)) => {
                proxy.update(|faults| {
                    for &id in receivers {
                        faults.loss.insert(id, percent);
                    }
                });
                Ok(())
            }
            _ => {
                let probability = format!("{:.2}", f64::from(percent) / 100.0);
                for &to in receivers {
                    for from in self.nodes.ids().into_iter().filter(|&id| id != to) {
                        iptables(
                            to,
                            &[
                                "-A",
                                "INPUT",
                                "-s",
                                &netns::node_ip(from).to_string(),
                                "-m",
                                "statistic",
                                "--mode",
                                "random",
                                "--probability",
                                &probability,
                                "-j",
                                "DROP",
                            ],
                        )?;
                    }
                }
                Ok(())
            }
        }
    }

    fn heal_network(&self) -> Result<(), String> {
        match (&self.mode, &self.proxy) {
            (Mode::Loopback, Some(proxy)) => {
                proxy.set(Faults::default());
                Ok(())
            }
            _ => self
                .nodes
                .ids()
                .into_iter()
                .try_for_each(|id| iptables(id, &["-F", "INPUT"])),
        }
    }

    /// Writes zeros into the node's data directory until it is full.
    fn fill(&self, id: u64) -> Result<(), String> {
        let path = filler_path(&self.nodes, id);
        let mut file =
            std::fs::File::create(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        let chunk = vec![0u8; 1 << 20];
        // Bounded: a tmpfs data directory is small; stop at 64 GiB in any
        // case rather than fill a real disk.
        for _ in 0..65_536 {
            if let Err(error) = file.write_all(&chunk) {
                return if error.raw_os_error() == Some(28) {
                    Ok(())
                } else {
                    Err(format!("{}: {error}", path.display()))
                };
            }
        }
        Err(format!(
            "{} never filled up: is it a tmpfs?",
            path.display()
        ))
    }

    fn unfill(&self, id: u64) -> Result<(), String> {
        let path = filler_path(&self.nodes, id);
        std::fs::remove_file(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        if self.nodes.is_running(id) {
            self.nodes.kill(id)?;
        }
        self.nodes.start(id)
    }
}

/// The nodes `target` names: the leader when it is known, else the
/// schedule's fallback node (a fault never hits nobody).
fn resolve(target: &Target, leader: Option<u64>) -> Vec<u64> {
    match target {
        Target::Nodes(ids) => ids.clone(),
        Target::Leader { otherwise } => vec![leader.unwrap_or(*otherwise)],
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Checks, in node `id`'s namespace, that iptables can add the rules the
/// `kinds` need (a plain `DROP`; the `statistic` match for loss), then
/// flushes them: a kernel or an iptables build without them fails here,
/// before the run, not at its first fault.
pub(crate) fn probe_iptables(id: u64, kinds: &[Kind]) -> Result<(), String> {
    // An address no node has: the probe rules match nothing.
    let nobody = "10.77.0.254";
    let mut result = iptables(id, &["-A", "INPUT", "-s", nobody, "-j", "DROP"]);
    if result.is_ok() && kinds.contains(&Kind::Loss) {
        result = iptables(
            id,
            &[
                "-A",
                "INPUT",
                "-s",
                nobody,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.10",
                "-j",
                "DROP",
            ],
        );
    }
    let flushed = iptables(id, &["-F", "INPUT"]);
    result
        .and(flushed)
        .map_err(|error| format!("iptables cannot inject the network faults asked for: {error}"))
}

/// Every directed link between a node of `left` and one of `right`, in
/// both directions.
fn both_ways(left: &[u64], right: &[u64]) -> Vec<(u64, u64)> {
    let mut cuts = Vec::new();
    for &a in left {
        for &b in right {
            cuts.push((a, b));
            cuts.push((b, a));
        }
    }
    cuts
}

/// The filler sits beside the data directory, on the same tmpfs (the
/// node never sees a file it did not write).
fn filler_path(nodes: &Nodes, id: u64) -> std::path::PathBuf {
    let data = nodes.data_dir(id);
    data.parent().unwrap_or(&data).join(FILLER)
}

/// Runs `iptables ARGS` in node `id`'s namespace.
fn iptables(id: u64, args: &[&str]) -> Result<(), String> {
    let mut words: Vec<String> = [
        "ip",
        "netns",
        "exec",
        &netns::node_namespace(id),
        "iptables",
        "-w",
    ]
    .iter()
    .map(|w| w.to_string())
    .collect();
    words.extend(args.iter().map(|w| w.to_string()));
    netns::run(&words)
}
