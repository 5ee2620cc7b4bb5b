//! The segmented log (work in progress).
