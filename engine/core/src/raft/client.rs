//! [`propose`]: a client's write through a node's Raft, answered once the
//! entry is committed and applied.
//!
//! It is `Raft::client_write` and nothing more, except for the planted bug
//! `AckBeforeCommit` (feature `planted-bugs`), which needs the client's
//! write path to live in the engine: with it, a leader answers a publish
//! from a scratch apply of its current state without waiting for the
//! quorum.

use crate::io::Env;
use openraft::error::{ClientWriteError, RaftError};

use sluice_model::state::{Command, Response};

use super::{Raft, StateView, TypeConfig};
#[cfg(feature = "planted-bugs")]
use sluice_model::testing::planted::{self, Bug};

/// Why a proposal got no answer: openraft's client write error (not the
/// leader, a fatal error of the node).
pub type ProposeError<E> = RaftError<TypeConfig<E>, ClientWriteError<TypeConfig<E>>>;

/// Proposes `command` through `raft` and returns its response: after a
/// quorum committed the entry and this node applied it. `view` is the
/// node's applied state (only the planted bug reads it).
///
/// A command carrying an event batch has its payload digest computed here,
/// on the caller's task, for the log's hash chain (`raft::codec`); with a
/// log whose chain is off (`ChainMode::Off`, for measurements) that pass
/// is wasted.
pub async fn propose<E: Env>(
    raft: &Raft<E>,
    view: &StateView<E>,
    mut command: Command,
) -> Result<Response, ProposeError<E>> {
    super::codec::prepare_digest(&mut command);
    #[cfg(feature = "planted-bugs")]
    if planted::is_planted(Bug::AckBeforeCommit)
        && matches!(command.op, sluice_model::state::Op::Publish(_))
        && raft.is_leader()
    {
        let mut scratch = view.read().clone();
        let index = scratch.last_applied_index().map_or(1, |index| index + 1);
        let predicted = scratch.apply(index, &command);
        raft.client_write_ff(command, None)
            .await
            .map_err(RaftError::Fatal)?;
        return Ok(predicted);
    }
    let _ = view;
    Ok(raft.client_write(command).await?.data)
}
