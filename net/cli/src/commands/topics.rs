//! `sluice topics`: create and list topics.

use std::process::ExitCode;

use super::{ClusterArgs, Outcome, runtime};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a topic (a no-op if it exists with the same settings).
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
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

pub(crate) fn run(command: Command) -> Outcome {
    runtime()?.block_on(async move {
        match command {
            Command::Create {
                name,
                partitions,
                cluster,
            } => {
                cluster.client()?.create_topic(&name, partitions).await?;
                println!("topic {name} has {partitions} partition(s)");
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
