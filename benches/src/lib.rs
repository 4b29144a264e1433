//! Shared helpers for the benches (see `benches/`).
