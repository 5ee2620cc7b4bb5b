//! `sluice publish`: one event per line of standard input.

use std::io::BufRead;
use std::process::ExitCode;

use bytes::Bytes;

use sluice_client::protocol::PublishOutcome;
use sluice_model::event::Headers;

use super::{ClusterArgs, Outcome, runtime};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The topic to publish to.
    topic: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Lines sent in one request at most.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Print one JSON object with the counts instead of a sentence.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Outcome {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let client = args.cluster.client()?;
    runtime()?.block_on(async move {
        let mut producer = client.producer().await?;
        let stdin = std::io::stdin().lock();
        let mut lines = stdin.lines();
        let (mut read, mut acknowledged, mut refused) = (0u64, 0u64, 0u64);
        loop {
            let mut events = Vec::with_capacity(args.batch);
            while events.len() < args.batch {
                let Some(line) = lines.next() else { break };
                let line = line.map_err(|error| format!("reading standard input: {error}"))?;
                read += 1;
                let (key, payload) = match line.split_once('\t') {
                    Some((key, payload)) => (key.to_owned(), payload.to_owned()),
                    None => (String::new(), line),
                };
                let event = producer
                    .stamp(
                        &args.topic,
                        Bytes::from(key),
                        Bytes::from(payload),
                        Headers::default(),
                    )
                    .await?;
                events.push(event);
            }
            if events.is_empty() {
                break;
            }
            for outcome in producer.publish(events).await? {
                match outcome {
                    PublishOutcome::Appended { .. } => acknowledged += 1,
                    PublishOutcome::Refused { message } => {
                        refused += 1;
                        eprintln!("refused: {message}");
                    }
                }
            }
        }
        if args.json {
            let line = serde_json::json!({
                "read": read,
                "acknowledged": acknowledged,
                "refused": refused,
            });
            println!("{line}");
        } else {
            println!("{acknowledged} of {read} events acknowledged");
        }
        Ok(if acknowledged == read {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}
