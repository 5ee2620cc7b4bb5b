//! Test-only machinery compiled into the engine itself, behind cargo
//! features that production builds never enable.
//!
//! - [`planted`] (feature `planted-bugs`): bugs the simulator switches on
//!   to prove its checker catches them.

#[cfg(feature = "planted-bugs")]
pub mod planted;
