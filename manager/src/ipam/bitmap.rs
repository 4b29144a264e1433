//! A chunked bitmap of used addresses: one bit per address plus a per-chunk used count, so
//! a search skips full chunks of 4096 addresses without reading them. 8M addresses take
//! 1 MiB of bits and 4 KiB of counts.

/// Bits per chunk (64 words of 64 bits).
const CHUNK_BITS: u64 = 4096;
const WORDS_PER_CHUNK: usize = (CHUNK_BITS / 64) as usize;

/// A fixed-size set of indexes `0..len`, with next-fit search for a clear bit.
#[derive(Clone, Debug)]
pub struct ChunkedBitmap {
    words: Vec<u64>,
    chunk_used: Vec<u16>,
    len: u64,
    used: u64,
    cursor: u64,
}

impl ChunkedBitmap {
    /// A bitmap of `len` clear bits.
    pub fn new(len: u64) -> Self {
        let words = len.div_ceil(64) as usize;
        let chunks = len.div_ceil(CHUNK_BITS) as usize;
        Self {
            words: vec![0; words],
            chunk_used: vec![0; chunks],
            len,
            used: 0,
            cursor: 0,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Whether bit `i` is set (false when out of range).
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Set bit `i`; false when it was already set or is out of range.
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        self.chunk_used[(i / CHUNK_BITS) as usize] += 1;
        self.used += 1;
        true
    }

    /// Clear bit `i`; false when it was already clear or is out of range.
    pub fn clear(&mut self, i: u64) -> bool {
        if !self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
        self.chunk_used[(i / CHUNK_BITS) as usize] -= 1;
        self.used -= 1;
        true
    }

    /// Set and return the first clear bit at or after the cursor (wrapping around), and move
    /// the cursor past it; `None` when every bit is set. Next-fit keeps a just-released
    /// address out of reuse for as long as possible.
    pub fn set_next_free(&mut self) -> Option<u64> {
        if self.used >= self.len {
            return None;
        }
        let start = self.cursor % self.len;
        let found = self
            .find_clear(start, self.len)
            .or_else(|| self.find_clear(0, start))?;
        self.set(found);
        self.cursor = found + 1;
        Some(found)
    }

    /// First clear bit in `from..to`.
    fn find_clear(&self, from: u64, to: u64) -> Option<u64> {
        let mut i = from;
        while i < to {
            let chunk = (i / CHUNK_BITS) as usize;
            let chunk_end = ((chunk as u64 + 1) * CHUNK_BITS).min(self.len);
            let chunk_size = chunk_end - chunk as u64 * CHUNK_BITS;
            if u64::from(self.chunk_used[chunk]) == chunk_size {
                i = chunk_end;
                continue;
            }
            let last_word = (chunk + 1) * WORDS_PER_CHUNK;
            let mut w = (i / 64) as usize;
            while w < last_word.min(self.words.len()) {
                let mut free = !self.words[w];
                if w == (i / 64) as usize {
                    free &= u64::MAX << (i % 64);
                }
                if free != 0 {
                    let bit = w as u64 * 64 + u64::from(free.trailing_zeros());
                    return (bit < to).then_some(bit);
                }
                w += 1;
            }
            i = chunk_end;
        }
        None
    }

    /// Indexes of the set bits, ascending.
    pub fn iter_set(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                Some(w as u64 * 64 + u64::from(b))
            })
        })
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8 + self.chunk_used.capacity() * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fit_wraps_and_skips_full_chunks() {
        let mut b = ChunkedBitmap::new(10_000);
        for i in 0..9_999 {
            assert!(b.set(i));
        }
        assert_eq!(b.set_next_free(), Some(9_999));
        assert_eq!(b.set_next_free(), None);
        assert!(b.clear(5));
        assert_eq!(b.set_next_free(), Some(5));
        assert_eq!(b.used(), 10_000);
        assert_eq!(b.iter_set().count(), 10_000);
    }

    #[test]
    fn odd_sizes_never_hand_out_bits_past_the_end() {
        for len in [1u64, 63, 64, 65, 4095, 4096, 4097] {
            let mut b = ChunkedBitmap::new(len);
            let got: Vec<u64> = std::iter::from_fn(|| b.set_next_free()).collect();
            assert_eq!(got, (0..len).collect::<Vec<_>>(), "len {len}");
        }
    }
}
