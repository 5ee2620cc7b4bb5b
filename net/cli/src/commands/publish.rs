//! `sluice publish`: one event per line of standard input.

use std::error::Error;
use std::fmt;
use std::io::BufRead;
use std::process::ExitCode;

use base64::Engine as _;
use bytes::Bytes;

use sluice_client::client::{ClientError, RemoteProducer};
use sluice_client::protocol::{PUBLISH_BYTES_MAX, PublishOutcome, publish_size};
use sluice_model::event::{Event, Headers};

use super::{ClusterArgs, Outcome, runtime};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The topic to publish to.
    topic: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Lines sent in one request at most (a request also stays within
    /// 8 MiB of events: larger batches go in several requests).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Each line's payload, and its key when it has one, is base64
    /// (standard alphabet, padded): for binary events.
    #[arg(long)]
    base64: bool,
    /// Print one JSON object with the counts instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// Why `publish` stopped before the end of its input, and how far it got.
#[derive(Debug)]
struct PublishStopped {
    /// What stopped it.
    cause: Box<dyn Error>,
    /// Lines read and turned into events before it stopped.
    read: u64,
    /// Events the cluster acknowledged.
    acknowledged: u64,
    /// Events of a request that failed without an answer.
    unknown: u64,
}

impl fmt::Display for PublishStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "publish stopped: {}. {} of the {} event(s) read before were acknowledged",
            self.cause, self.acknowledged, self.read
        )?;
        if self.unknown > 0 {
            write!(
                f,
                "; the outcome of the last request's {} event(s) is unknown: they may have \
                 been appended",
                self.unknown
            )?;
        }
        Ok(())
    }
}

impl Error for PublishStopped {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.cause.as_ref())
    }
}

/// An input line that cannot become an event.
#[derive(Debug, thiserror::Error)]
enum LineError {
    /// Reading standard input failed (it is not UTF-8, or the read failed).
    #[error("standard input line {line}: {source}")]
    Read {
        line: u64,
        #[source]
        source: std::io::Error,
    },
    /// With `--base64`, a field is not base64.
    #[error("line {line}: the {field} is not base64 (--base64 was given): {source}")]
    Base64 {
        line: u64,
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
}

#[derive(Debug, Default)]
struct Counts {
    read: u64,
    acknowledged: u64,
    refused: u64,
}

pub(crate) fn run(args: Args) -> Outcome {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let client = args.cluster.client()?;
    runtime()?.block_on(async move {
        let mut producer = client.producer().await?;
        let stdin = std::io::stdin().lock();
        let mut counts = Counts::default();
        let stopped = publish_lines(&args, &mut producer, stdin, &mut counts).await;
        if args.json {
            let mut line = serde_json::json!({
                "read": counts.read,
                "acknowledged": counts.acknowledged,
                "refused": counts.refused,
            });
            if let Err(stopped) = &stopped {
                line["error"] = stopped.to_string().into();
            }
            println!("{line}");
        } else {
            println!(
                "{} of {} events acknowledged",
                counts.acknowledged, counts.read
            );
        }
        stopped?;
        Ok(if counts.acknowledged == counts.read {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// Publishes every line of `input`, in requests of at most `--batch`
/// events and [`PUBLISH_BYTES_MAX`] bytes. An event the format refuses (too
/// large) is counted as refused and skipped; an unreadable line stops the
/// input, after the lines before it are published.
async fn publish_lines(
    args: &Args,
    producer: &mut RemoteProducer,
    input: impl BufRead,
    counts: &mut Counts,
) -> Result<(), PublishStopped> {
    let mut lines = input.lines();
    let mut batch: Vec<Event> = Vec::with_capacity(args.batch.min(1024));
    let mut batch_bytes = 0;
    let mut number = 0u64;
    let mut input_error = None;
    loop {
        let line = match lines.next() {
            None => break,
            Some(Ok(line)) => line,
            Some(Err(source)) => {
                input_error = Some(LineError::Read {
                    line: number + 1,
                    source,
                });
                break;
            }
        };
        number += 1;
        let (key, payload) = match split(&line, number, args.base64) {
            Ok(fields) => fields,
            Err(error) => {
                input_error = Some(error);
                break;
            }
        };
        counts.read += 1;
        let event = match producer
            .stamp(&args.topic, key, payload, Headers::default())
            .await
        {
            Ok(event) => event,
            Err(ClientError::Event(error)) => {
                counts.refused += 1;
                eprintln!("refused: line {number}: {error}");
                continue;
            }
            Err(error) => return Err(stop(error, counts, 0)),
        };
        let size = publish_size(&event);
        if !batch.is_empty()
            && (batch.len() >= args.batch || batch_bytes + size > PUBLISH_BYTES_MAX)
        {
            send(producer, std::mem::take(&mut batch), counts).await?;
            batch_bytes = 0;
        }
        batch.push(event);
        batch_bytes += size;
    }
    if !batch.is_empty() {
        send(producer, batch, counts).await?;
    }
    match input_error {
        Some(error) => Err(stop(error, counts, 0)),
        None => Ok(()),
    }
}

/// A line's key (before a tab, if any) and payload.
fn split(line: &str, number: u64, base64: bool) -> Result<(Bytes, Bytes), LineError> {
    let (key, payload) = line.split_once('\t').unwrap_or(("", line));
    if !base64 {
        return Ok((
            Bytes::copy_from_slice(key.as_bytes()),
            Bytes::copy_from_slice(payload.as_bytes()),
        ));
    }
    let decode = |field: &'static str, text: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(|source| LineError::Base64 {
                line: number,
                field,
                source,
            })
    };
    Ok((decode("key", key)?, decode("payload", payload)?))
}

async fn send(
    producer: &mut RemoteProducer,
    events: Vec<Event>,
    counts: &mut Counts,
) -> Result<(), PublishStopped> {
    let sent = events.len() as u64;
    let outcomes = producer
        .publish(events)
        .await
        .map_err(|error| stop(error, counts, sent))?;
    for outcome in outcomes {
        match outcome {
            PublishOutcome::Appended { .. } => counts.acknowledged += 1,
            PublishOutcome::Refused { message } => {
                counts.refused += 1;
                eprintln!("refused: {message}");
            }
        }
    }
    Ok(())
}

fn stop(cause: impl Into<Box<dyn Error>>, counts: &Counts, unknown: u64) -> PublishStopped {
    PublishStopped {
        cause: cause.into(),
        read: counts.read,
        acknowledged: counts.acknowledged,
        unknown,
    }
}
