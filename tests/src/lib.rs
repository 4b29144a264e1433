//! Harness for integration tests with real peers.
