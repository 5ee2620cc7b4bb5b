//! What a run needs from the machine, checked before it starts: every
//! program its network mode and chosen nemeses exec, and the libfaketime
//! library for clock skew. A run that cannot inject a fault it was asked
//! for refuses to start, naming what is missing and how to install it: it
//! installs nothing itself (`jepsen/ci.sh` installs them in CI).
//!
//! Presence is checked first, before anything is created
//! ([`check`]); whether the tools work is probed once the network exists
//! (the supervisor adds and flushes one rule of each kind in a node's
//! namespace) and, for libfaketime, by loading it into the `sluice`
//! binary ([`probe_libfaketime`]).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::config::Mode;
use super::schedule::Kind;

/// Something a run needs: a program found on `PATH`, or a library file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Need {
    /// The program's name, or a description of the library.
    pub(crate) name: &'static str,
    /// Program or library.
    pub(crate) what: NeedKind,
    /// What it is used for, for the message.
    pub(crate) used_for: String,
    /// The Debian/Ubuntu package that provides it.
    pub(crate) package: &'static str,
}

/// How a [`Need`] is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NeedKind {
    /// An executable on `PATH`.
    Program,
    /// The libfaketime preload library ([`find_libfaketime`]).
    Libfaketime,
}

/// The network kinds: namespace mode injects them with iptables, loopback
/// mode through its proxy.
pub(crate) const IPTABLES_KINDS: [Kind; 5] = [
    Kind::PartitionHalves,
    Kind::PartitionLeader,
    Kind::PartitionBridge,
    Kind::OneWay,
    Kind::Loss,
];

/// What a run in `mode` with the nemesis `kinds` needs.
pub(crate) fn needs(mode: Mode, kinds: &[Kind]) -> Vec<Need> {
    let mut needs = Vec::new();
    let program = |name, used_for: String, package| Need {
        name,
        what: NeedKind::Program,
        used_for,
        package,
    };
    if mode == Mode::Netns {
        needs.push(program(
            "ip",
            "network namespaces (or pass --no-netns)".to_owned(),
            "iproute2",
        ));
        let network: Vec<&str> = kinds
            .iter()
            .filter(|kind| IPTABLES_KINDS.contains(kind))
            .map(|kind| kind.name())
            .collect();
        if !network.is_empty() {
            needs.push(program(
                "iptables",
                format!("the {} nemesis", network.join(", ")),
                "iptables",
            ));
        }
    }
    if kinds.contains(&Kind::Disk) {
        for name in ["mount", "umount"] {
            needs.push(program(
                name,
                "the disk nemesis (a tmpfs per node)".to_owned(),
                "mount",
            ));
        }
    }
    if kinds.contains(&Kind::Skew) {
        needs.push(Need {
            name: "libfaketime (libfaketimeMT.so.1)",
            what: NeedKind::Libfaketime,
            used_for: "the skew nemesis (or pass --libfaketime PATH)".to_owned(),
            package: "faketime",
        });
    }
    needs
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// The libfaketime library, when skew is asked for.
    pub(crate) libfaketime: Option<PathBuf>,
}

/// Checks that everything `needs` names is there: programs on `path` (the
/// value of `PATH`), libfaketime at `libfaketime` if given, else where
/// [`find_libfaketime`] looks. The error names every missing thing, what
/// it is for and how to install it.
pub(crate) fn check(
    needs: &[Need],
    path: Option<&OsStr>,
    libfaketime: Option<&Path>,
) -> Result<Found, String> {
    let mut found = Found::default();
    let mut missing = Vec::new();
    for need in needs {
        match need.what {
            NeedKind::Program => {
                if find_program(need.name, path).is_none() {
                    missing.push(need);
                }
            }
            NeedKind::Libfaketime => {
                let library = match libfaketime {
                    Some(given) => is_file(given).then(|| given.to_path_buf()),
                    None => find_libfaketime(),
                };
                match library {
                    Some(library) => found.libfaketime = Some(library),
                    None => missing.push(need),
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(found);
    }
    let mut packages: Vec<&str> = missing.iter().map(|need| need.package).collect();
    packages.dedup();
    let mut text = String::from(
        "this run cannot inject the faults it was asked for; refusing to start. Missing:\n",
    );
    for need in &missing {
        let place = match (need.what, libfaketime) {
            (NeedKind::Program, _) => "not on PATH".to_owned(),
            (NeedKind::Libfaketime, Some(given)) => format!("not at {}", given.display()),
            (NeedKind::Libfaketime, None) => format!(
                "not at any of {}",
                libfaketime_candidates()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        text.push_str(&format!(
            "  {} ({place}), needed for {}: package `{}`\n",
            need.name, need.used_for, need.package
        ));
    }
    text.push_str(&format!(
        "Install with: apt-get install {} (Debian/Ubuntu), or leave those nemeses out of --nemesis.",
        packages.join(" ")
    ));
    Err(text)
}

/// `name` as `execvp` would find it on `path`: the first executable
/// regular file of that name in a directory of `path`.
pub(crate) fn find_program(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    let path = path?;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn is_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file())
}

/// Where distributions put the multi-threaded libfaketime: Debian's
/// multiarch directory for this architecture, then the plain ones.
pub(crate) fn libfaketime_candidates() -> Vec<PathBuf> {
    let file = "libfaketimeMT.so.1";
    let multiarch = format!("/usr/lib/{}-linux-gnu/faketime", std::env::consts::ARCH);
    [
        multiarch.as_str(),
        "/usr/lib/faketime",
        "/usr/lib64/faketime",
        "/usr/local/lib/faketime",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(file))
    .collect()
}

/// The first libfaketime library that exists.
pub(crate) fn find_libfaketime() -> Option<PathBuf> {
    libfaketime_candidates()
        .into_iter()
        .find(|path| is_file(path))
}

/// Loads `library` into `sluice --version` and checks that the dynamic
/// loader took it: the loader only warns about a preload library it
/// cannot load and runs the program anyway, which is how a skew could
/// pass unnoticed.
pub(crate) fn probe_libfaketime(sluice: &Path, library: &Path) -> Result<(), String> {
    let output = Command::new(sluice)
        .arg("--version")
        .env("LD_PRELOAD", library)
        .env("FAKETIME", "+0s")
        .output()
        .map_err(|error| format!("cannot run {} --version: {error}", sluice.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() && !stderr.contains("LD_PRELOAD") {
        Ok(())
    } else {
        Err(format!(
            "libfaketime at {} does not load into {} ({}): {}; install the `faketime` \
             package for this machine's architecture or pass --libfaketime PATH",
            library.display(),
            sluice.display(),
            output.status,
            stderr.trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(needs: &[Need]) -> Vec<&str> {
        needs.iter().map(|need| need.name).collect()
    }

    #[test]
    fn namespace_partitions_need_ip_and_iptables_loopback_ones_need_nothing() {
        let partitions = Kind::parse_list("partition").unwrap();
        assert_eq!(names(&needs(Mode::Netns, &partitions)), ["ip", "iptables"]);
        assert!(needs(Mode::Loopback, &partitions).is_empty());
        let kill = Kind::parse_list("kill,pause").unwrap();
        assert_eq!(names(&needs(Mode::Netns, &kill)), ["ip"]);
        let all = needs(Mode::Netns, &Kind::ALL);
        assert_eq!(
            names(&all),
            [
                "ip",
                "iptables",
                "mount",
                "umount",
                "libfaketime (libfaketimeMT.so.1)"
            ]
        );
        let iptables = &all[1];
        for kind in IPTABLES_KINDS {
            assert!(iptables.used_for.contains(kind.name()), "{iptables:?}");
        }
    }

    #[test]
    fn a_missing_program_is_named_with_its_package_and_a_present_one_passes() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("ip");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Not executable: not found, as execvp would not run it.
        std::fs::write(dir.path().join("iptables"), "").unwrap();
        let path = dir.path().as_os_str();
        assert_eq!(find_program("ip", Some(path)), Some(fake));
        assert_eq!(find_program("iptables", Some(path)), None);
        let kinds = Kind::parse_list("one-way").unwrap();
        let error = check(&needs(Mode::Netns, &kinds), Some(path), None).unwrap_err();
        assert!(error.contains("iptables (not on PATH)"), "{error}");
        assert!(error.contains("one-way"), "{error}");
        assert!(error.contains("apt-get install iptables"), "{error}");
        assert!(!error.contains("  ip "), "{error}");
        let kill = Kind::parse_list("kill").unwrap();
        assert_eq!(
            check(&needs(Mode::Netns, &kill), Some(path), None),
            Ok(Found::default())
        );
    }

    #[test]
    fn skew_needs_the_library_at_the_given_path() {
        let dir = tempfile::tempdir().unwrap();
        let library = dir.path().join("libfaketimeMT.so.1");
        let skew = Kind::parse_list("skew").unwrap();
        let error = check(&needs(Mode::Loopback, &skew), None, Some(&library)).unwrap_err();
        assert!(error.contains("libfaketime"), "{error}");
        assert!(error.contains("apt-get install faketime"), "{error}");
        std::fs::write(&library, "").unwrap();
        let found = check(&needs(Mode::Loopback, &skew), None, Some(&library)).unwrap();
        assert_eq!(found.libfaketime, Some(library));
    }
}
