//! Benchmarks for Sluice; see `benches/README.md`.
