//! Guest memory table (to be filled).
