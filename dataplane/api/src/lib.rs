//! The node daemon control API types and client.
