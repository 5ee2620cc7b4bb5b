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

use std::io::Write;
use std::sync::Arc;

use nix::sys::signal::Signal;

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
}

/// Where the filler of a full-disk fault goes.
const FILLER: &str = "nemesis-filler";

impl Nemesis {
    /// A nemesis over `nodes`; `proxy` in loopback mode.
    pub(crate) fn new(
        mode: Mode,
        nodes: Arc<Nodes>,
        proxy: Option<Proxy>,
        recorder: Arc<Recorder>,
    ) -> Nemesis {
        Nemesis {
            mode,
            nodes,
            proxy,
            recorder,
            active: Vec::new(),
            unexpected_exits: Vec::new(),
        }
    }

    /// Starts `fault`; `leader` is the node that leads now, if known.
    pub(crate) fn start(&mut self, fault: &Fault, leader: Option<u64>) {
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
                (
                    format!("node {node}'s wall clock moves by {seconds:+} s"),
                    self.nodes.set_skew(*node, *seconds),
                )
            }
            Fault::Disk(node) => {
                self.active = vec![*node];
                (
                    format!("fill node {node}'s data directory"),
                    self.fill(*node),
                )
            }
        };
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
        let isolates_leader = matches!(left, Target::Leader);
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
    pub(crate) fn heal(&mut self, fault: &Fault) {
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
            Fault::Skew { node, .. } => (
                format!("node {node}'s wall clock back to true time"),
                self.nodes.set_skew(*node, 0),
            ),
            Fault::Disk(node) => (
                format!("free node {node}'s data directory and restart it"),
                self.unfill(*node),
            ),
        };
        self.record("heal", Some(kind), action, result);
        self.restart_exited();
    }

    /// Heals everything, whatever is in force (the end of a run).
    pub(crate) fn heal_all(&mut self, skew: bool) {
        let mut result = self.heal_network();
        for id in self.nodes.ids() {
            let _ = self.nodes.signal(id, Signal::SIGCONT);
            if skew {
                result = result.and(self.nodes.set_skew(id, 0));
            }
            let filler = filler_path(&self.nodes, id);
            if filler.exists() {
                result = result.and(self.unfill(id));
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
        &self,
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
        eprintln!(
            "nemesis: {phase} {}: {action}",
            kind.map_or("-", Kind::name)
        );
        self.recorder
            .nemesis(phase, kind.map(Kind::name), action, ok);
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

/// The nodes `target` names; the leader only if it is known.
fn resolve(target: &Target, leader: Option<u64>) -> Vec<u64> {
    match target {
        Target::Nodes(ids) => ids.clone(),
        Target::Leader => leader.into_iter().collect(),
    }
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
