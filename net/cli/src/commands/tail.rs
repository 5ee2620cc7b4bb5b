//! `sluice tail`: prints a topic's events as they arrive, alone or as a
//! member of a consumer group.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;

use sluice_client::consumer::{RemoteConsumer, Start};
use sluice_client::protocol::FetchedEvent;

use super::{ClusterArgs, Outcome, runtime};

/// The pause after a round of fetches that found nothing.
const IDLE_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The topic to read.
    topic: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Consume as a member of this group: continue from its committed
    /// offsets and commit what was printed.
    #[arg(long)]
    group: Option<String>,
    /// Start at the first retained event (otherwise at the end, or at the
    /// group's committed offsets).
    #[arg(long)]
    from_beginning: bool,
    /// Exit after this many seconds without a new event.
    #[arg(long, value_name = "SECS")]
    idle_exit: Option<f64>,
    /// One JSON object per event: partition, offset, key, payload (or
    /// payload_base64 when it is not UTF-8).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Outcome {
    if let Some(secs) = args.idle_exit {
        if !(secs.is_finite() && secs >= 0.0) {
            return Err("--idle-exit must be a number of seconds, 0 or more".into());
        }
    }
    let client = args.cluster.client()?;
    runtime()?.block_on(async move {
        let start = if args.from_beginning {
            Start::Earliest
        } else {
            Start::Latest
        };
        let topics = [args.topic.as_str()];
        let mut consumer = match &args.group {
            Some(group) => {
                let member = format!("tail-{}-{}", std::process::id(), unique());
                RemoteConsumer::join(client, group, &member, &topics, start).await?
            }
            None => RemoteConsumer::all_partitions(client, &topics, start).await?,
        };
        let idle_limit = args.idle_exit.map(Duration::from_secs_f64);
        let mut last_event = Instant::now();
        let mut out = std::io::stdout().lock();
        loop {
            let events = consumer.poll().await?;
            for polled in &events {
                print_event(&mut out, polled.partition, &polled.event, args.json)?;
            }
            out.flush()?;
            if events.is_empty() {
                if idle_limit.is_some_and(|limit| last_event.elapsed() >= limit) {
                    break;
                }
                tokio::time::sleep(IDLE_PAUSE).await;
            } else {
                last_event = Instant::now();
                consumer.commit().await?;
            }
        }
        consumer.leave().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A number that differs between runs started in the same process id.
fn unique() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn print_event(
    out: &mut impl Write,
    partition: u32,
    event: &FetchedEvent,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let mut line = serde_json::json!({
            "partition": partition,
            "offset": event.offset,
        });
        let object = line.as_object_mut().expect("an object");
        let b64 = base64::engine::general_purpose::STANDARD;
        match std::str::from_utf8(&event.key) {
            Ok(key) => object.insert("key".into(), key.into()),
            Err(_) => object.insert("key_base64".into(), b64.encode(&event.key).into()),
        };
        match std::str::from_utf8(&event.payload) {
            Ok(payload) => object.insert("payload".into(), payload.into()),
            Err(_) => object.insert("payload_base64".into(), b64.encode(&event.payload).into()),
        };
        writeln!(out, "{line}")
    } else {
        writeln!(
            out,
            "{partition}\t{}\t{}\t{}",
            event.offset,
            String::from_utf8_lossy(&event.key),
            String::from_utf8_lossy(&event.payload)
        )
    }
}
