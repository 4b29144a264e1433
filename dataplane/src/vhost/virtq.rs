//! Split virtqueue fast path (to be filled).
