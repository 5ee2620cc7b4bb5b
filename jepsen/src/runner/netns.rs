//! The run's network: one namespace per node, one for the clients, one
//! holding the bridge, joined by veth pairs. Nothing lives in the host's
//! namespace: the bridge has its own, no namespace gets a default route,
//! and every address (10.77.0.0/24) exists only inside namespaces created
//! here. Deleting the namespaces deletes every interface, address and
//! iptables rule in them; the tmpfs data directories are the only other
//! thing a run leaves in the host, and they are unmounted at teardown.
//!
//! Leftovers of an earlier run (a namespace whose name starts with
//! [`PREFIX`], a tmpfs whose source is [`MOUNT_SOURCE`]) make the runner
//! refuse to start; [`leftovers`] finds them and [`cleanup_commands`] says
//! how to remove them.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every namespace this runner creates starts with this.
pub(crate) const PREFIX: &str = "sluice-jepsen-";

/// The source name of every tmpfs this runner mounts (the first field of
/// its line in `/proc/mounts`).
pub(crate) const MOUNT_SOURCE: &str = "sluice-jepsen";

/// The port every node listens on.
pub(crate) const NODE_PORT: u16 = 7000;

/// The namespace holding the bridge.
pub(crate) fn bridge_namespace() -> String {
    format!("{PREFIX}br")
}

/// Node `id`'s namespace.
pub(crate) fn node_namespace(id: u64) -> String {
    format!("{PREFIX}n{id}")
}

/// The clients' namespace.
pub(crate) fn client_namespace() -> String {
    format!("{PREFIX}c")
}

/// Node `id`'s address in namespace mode.
pub(crate) fn node_ip(id: u64) -> Ipv4Addr {
    assert!((1..=100).contains(&id), "node ids 1..=100");
    Ipv4Addr::new(10, 77, 0, 10 + id as u8)
}

/// The clients' address in namespace mode.
pub(crate) fn client_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 200)
}

/// Node `id`'s listening address in namespace mode.
pub(crate) fn node_address(id: u64) -> SocketAddr {
    SocketAddr::from((node_ip(id), NODE_PORT))
}

/// What an earlier run left behind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Leftovers {
    /// Namespaces named with [`PREFIX`].
    pub(crate) namespaces: Vec<String>,
    /// Mount points of tmpfs mounts with source [`MOUNT_SOURCE`].
    pub(crate) mounts: Vec<PathBuf>,
}

impl Leftovers {
    /// Nothing was left.
    pub(crate) fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.mounts.is_empty()
    }
}

/// Finds leftovers in the output of `ip netns list` and the text of
/// `/proc/mounts`.
pub(crate) fn parse_leftovers(netns_list: &str, mounts: &str) -> Leftovers {
    let namespaces = netns_list
        .lines()
        // `ip netns list` prints "NAME" or "NAME (id: N)".
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
        .map(str::to_owned)
        .collect();
    let mounts = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?;
            let target = fields.next()?;
            (source == MOUNT_SOURCE).then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .collect();
    Leftovers { namespaces, mounts }
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(path: &str) -> String {
    path.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The shell commands that remove `leftovers`: kill what runs in each
/// namespace, delete it, unmount each tmpfs.
pub(crate) fn cleanup_commands(leftovers: &Leftovers) -> Vec<String> {
    let mut commands = Vec::new();
    for name in &leftovers.namespaces {
        commands.push(format!("ip netns pids {name} | xargs -r kill -9"));
        commands.push(format!("ip netns delete {name}"));
    }
    for mount in &leftovers.mounts {
        commands.push(format!("umount -l '{}'", mount.display()));
    }
    commands
}

/// What [`find_leftovers`] makes of a machine without `ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WithoutIp {
    /// An error: namespaces cannot be listed (namespace mode, cleanup).
    Refuse,
    /// No namespaces to leave: a run in loopback mode creates none.
    NoNamespaces,
}

/// Reads the system's leftovers (`ip netns list`, `/proc/mounts`).
pub(crate) fn find_leftovers(without_ip: WithoutIp) -> Result<Leftovers, String> {
    let list = match Command::new("ip").args(["netns", "list"]).output() {
        Ok(list) => String::from_utf8_lossy(&list.stdout).into_owned(),
        Err(error)
            if without_ip == WithoutIp::NoNamespaces && error.kind() == io::ErrorKind::NotFound =>
        {
            String::new()
        }
        Err(error) => {
            return Err(format!(
                "cannot run `ip netns list`: {error}; install iproute2"
            ));
        }
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    Ok(parse_leftovers(&list, &mounts))
}

/// The commands (argument vectors) that build the network for nodes
/// `1..=nodes`: namespaces, the bridge, a veth pair per namespace with one
/// end on the bridge, addresses, loopbacks up. Pure, so it can be checked
/// without root.
pub(crate) fn setup_commands(nodes: u64) -> Vec<Vec<String>> {
    let bridge = bridge_namespace();
    let mut commands: Vec<Vec<String>> = Vec::new();
    let mut run = |words: &[&str]| commands.push(words.iter().map(|w| w.to_string()).collect());
    run(&["ip", "netns", "add", &bridge]);
    run(&["ip", "-n", &bridge, "link", "add", "br0", "type", "bridge"]);
    run(&["ip", "-n", &bridge, "link", "set", "br0", "up"]);
    run(&["ip", "-n", &bridge, "link", "set", "lo", "up"]);
    let mut members: Vec<(String, Ipv4Addr, String)> = (1..=nodes)
        .map(|id| (node_namespace(id), node_ip(id), format!("vn{id}")))
        .collect();
    members.push((client_namespace(), client_ip(), "vc".to_owned()));
    for (namespace, ip, port) in &members {
        let address = format!("{ip}/24");
        run(&["ip", "netns", "add", namespace]);
        // Both ends are created in the bridge's namespace, then one moves
        // out: the host's namespace never holds either.
        run(&[
            "ip", "-n", &bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", namespace,
        ]);
        run(&["ip", "-n", &bridge, "link", "set", port, "master", "br0"]);
        run(&["ip", "-n", &bridge, "link", "set", port, "up"]);
        run(&[
            "ip", "-n", namespace, "addr", "add", &address, "dev", "eth0",
        ]);
        run(&["ip", "-n", namespace, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", namespace, "link", "set", "lo", "up"]);
    }
    commands
}

/// Every namespace a run over `nodes` nodes creates.
pub(crate) fn namespaces(nodes: u64) -> Vec<String> {
    let mut names = vec![bridge_namespace(), client_namespace()];
    names.extend((1..=nodes).map(node_namespace));
    names
}

/// Runs one command; the error names it and carries its stderr.
pub(crate) fn run(words: &[String]) -> Result<(), String> {
    let output = Command::new(&words[0])
        .args(&words[1..])
        .output()
        .map_err(|error| format!("cannot run `{}`: {error}", words.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            words.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Mounts a tmpfs of `size_mib` at `target` (created if missing).
pub(crate) fn mount_tmpfs(target: &Path, size_mib: u64) -> Result<(), String> {
    std::fs::create_dir_all(target)
        .map_err(|error| format!("cannot create {}: {error}", target.display()))?;
    run(&[
        "mount".into(),
        "-t".into(),
        "tmpfs".into(),
        "-o".into(),
        format!("size={size_mib}m"),
        MOUNT_SOURCE.into(),
        target.display().to_string(),
    ])
}

/// Kills whatever runs in `namespace` and deletes it; best effort, returns
/// what failed.
pub(crate) fn delete_namespace(namespace: &str) -> Vec<String> {
    let mut failures = Vec::new();
    if let Ok(output) = Command::new("ip")
        .args(["netns", "pids", namespace])
        .output()
    {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    if let Err(error) = run(&[
        "ip".into(),
        "netns".into(),
        "delete".into(),
        namespace.into(),
    ]) {
        failures.push(error);
    }
    failures
}

/// Unmounts a tmpfs this runner mounted (lazily, so a process still
/// holding a file cannot keep it).
pub(crate) fn unmount(target: &Path) -> Result<(), String> {
    run(&["umount".into(), "-l".into(), target.display().to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_found_by_prefix_and_mount_source_only() {
        let list =
            "sluice-jepsen-n1 (id: 3)\nsluice-jepsen-br\nsomeone-else\nsluice-jepsen-c (id: 0)\n";
        let mounts = "proc /proc proc rw 0 0\n\
                      sluice-jepsen /tmp/run\\040one/node-1 tmpfs rw,size=65536k 0 0\n\
                      tmpfs /tmp tmpfs rw 0 0\n";
        let found = parse_leftovers(list, mounts);
        assert_eq!(
            found.namespaces,
            ["sluice-jepsen-n1", "sluice-jepsen-br", "sluice-jepsen-c"]
        );
        assert_eq!(found.mounts, [PathBuf::from("/tmp/run one/node-1")]);
        let commands = cleanup_commands(&found);
        assert!(commands.contains(&"ip netns delete sluice-jepsen-br".to_owned()));
        assert!(commands.contains(&"umount -l '/tmp/run one/node-1'".to_owned()));
        assert!(parse_leftovers("other\n", "tmpfs /tmp tmpfs rw 0 0\n").is_empty());
    }

    #[test]
    fn setup_uses_only_its_own_namespaces_and_never_a_default_route() {
        let commands = setup_commands(5);
        let created = namespaces(5);
        assert_eq!(created.len(), 7);
        for words in &commands {
            let line = words.join(" ");
            assert!(!line.contains("default"), "{line}");
            assert!(!line.contains("route"), "{line}");
            // Every `ip` command names one of the run's namespaces.
            assert!(
                created.iter().any(|name| words.contains(name)),
                "a command outside the run's namespaces: {line}"
            );
            assert!(
                words
                    .iter()
                    .all(|w| !w.starts_with(PREFIX) || created.contains(w))
            );
        }
        // Every namespace is added exactly once.
        for name in &created {
            let adds = commands
                .iter()
                .filter(|w| w[..3] == ["ip", "netns", "add"] && &w[3] == name)
                .count();
            assert_eq!(adds, 1, "{name}");
        }
        let addresses: Vec<String> = commands
            .iter()
            .filter(|w| w.get(3).map(String::as_str) == Some("addr"))
            .map(|w| w[5].clone())
            .collect();
        assert_eq!(addresses.len(), 6);
        assert!(addresses.iter().all(|a| a.starts_with("10.77.0.")));
    }
}
