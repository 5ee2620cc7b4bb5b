//! `sluice topics`: create, alter and list topics.

use std::process::ExitCode;

use sluice_model::state::{Op, RETENTION_MS_DEFAULT, Response, TopicConfig};

use super::{ClusterArgs, Outcome, runtime};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a topic (a no-op if it exists with the same settings). It
    /// keeps its events 7 days unless told otherwise.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Change a topic's retention; limits not named stay as they are. The
    /// leader trims the log by the new policy from its next retention
    /// round.
    Alter {
        /// Topic name.
        name: String,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// List topics and their partition counts.
    List {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// A topic's retention limits on the command line.
#[derive(Debug, clap::Args)]
pub(crate) struct RetentionArgs {
    /// Keep events at least this many milliseconds, or `unlimited` (by
    /// default 604800000, 7 days).
    #[arg(long, value_name = "MS|unlimited", value_parser = parse_limit)]
    retention_ms: Option<Limit>,
    /// Keep at least the newest this many bytes of the log, or
    /// `unlimited` (the default). Topics share one log: this counts every
    /// topic's events.
    #[arg(long, value_name = "BYTES|unlimited", value_parser = parse_limit)]
    retention_bytes: Option<Limit>,
    /// `unlimited`: keep every event forever (both limits off). Such a
    /// topic keeps the whole log, every other topic's events included.
    #[arg(
        long,
        value_name = "unlimited",
        value_parser = ["unlimited"],
        conflicts_with_all = ["retention_ms", "retention_bytes"]
    )]
    retention: Option<String>,
}

/// One retention limit: a number, or none.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<u64>);

fn parse_limit(text: &str) -> Result<Limit, String> {
    if text == "unlimited" {
        return Ok(Limit(None));
    }
    match text.parse::<u64>() {
        Ok(0) => Err(
            "a limit of 0 would drop every sealed segment at once; give at least 1, \
                      or `unlimited`"
                .to_owned(),
        ),
        Ok(value) => Ok(Limit(Some(value))),
        Err(error) => Err(format!(
            "{text:?} is neither a whole number nor `unlimited`: {error}"
        )),
    }
}

impl RetentionArgs {
    /// The changes asked for: each `Some` replaces that limit.
    fn changes(&self) -> (Option<Option<u64>>, Option<Option<u64>>) {
        if self.retention.is_some() {
            return (Some(None), Some(None));
        }
        (
            self.retention_ms.map(|limit| limit.0),
            self.retention_bytes.map(|limit| limit.0),
        )
    }

    /// The configuration of a new topic: the default with the changes.
    fn config(&self) -> TopicConfig {
        let (retention_ms, retention_bytes) = self.changes();
        TopicConfig {
            retention_ms: retention_ms.unwrap_or(Some(RETENTION_MS_DEFAULT)),
            retention_bytes: retention_bytes.unwrap_or(None),
        }
    }
}

/// Says on stderr what an unlimited topic costs.
fn warn_if_unlimited(name: &str, config: &TopicConfig) {
    if config.is_unlimited() {
        eprintln!(
            "note: topic {name} keeps every event forever; topics share one log, so while it \
             exists no topic's events are trimmed"
        );
    }
}

pub(crate) fn run(command: Command) -> Outcome {
    runtime()?.block_on(async move {
        match command {
            Command::Create {
                name,
                partitions,
                retention,
                cluster,
            } => {
                let config = retention.config();
                let op = Op::CreateTopic {
                    name: name.clone(),
                    partitions,
                    config,
                };
                cluster.client()?.write(op).await?;
                println!("topic {name} has {partitions} partition(s), {config}");
                warn_if_unlimited(&name, &config);
            }
            Command::Alter {
                name,
                retention,
                cluster,
            } => {
                let (retention_ms, retention_bytes) = retention.changes();
                if retention_ms.is_none() && retention_bytes.is_none() {
                    return Err("name what to change: --retention-ms, --retention-bytes or \
                                --retention unlimited"
                        .into());
                }
                let op = Op::AlterTopic {
                    name: name.clone(),
                    retention_ms,
                    retention_bytes,
                };
                match cluster.client()?.write(op).await? {
                    Response::TopicAltered { config } => {
                        println!("topic {name} now has {config}");
                        warn_if_unlimited(&name, &config);
                    }
                    other => {
                        return Err(format!(
                            "the cluster answered {other:?} to altering topic {name}; is it an \
                             older version without `topics alter`?"
                        )
                        .into());
                    }
                }
            }
            Command::List { cluster, json } => {
                let metadata = cluster.client()?.metadata().await?;
                for (name, partitions) in metadata.topics {
                    if json {
                        let line = serde_json::json!({"name": name, "partitions": partitions});
                        println!("{line}");
                    } else {
                        println!("{name}\t{partitions}");
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
