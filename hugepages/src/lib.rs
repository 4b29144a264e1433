//! Hugepage discovery and EAL memory arguments.
