//! Sluice: a durable, Raft-replicated event bus to embed.
