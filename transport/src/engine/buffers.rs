//! Reuse of datagram buffers: once the I/O layer hands sent payloads back
//! ([`Engine::recycle`](super::Engine::recycle)), building a packet allocates nothing,
//! and the buffer it gets is one the cache has just seen.

/// Buffers kept at most (a window of MTU-sized packets; more would only hold memory).
const MAX_KEPT: usize = 1024;
/// Buffers larger than this are not kept (a 4096-byte MTU packet with every header fits).
const MAX_KEPT_CAPACITY: usize = 8192;

/// A stack of spare buffers: last in, first out, so the next packet reuses the warmest.
#[derive(Default)]
pub(crate) struct BufferPool {
    spare: Vec<Vec<u8>>,
}

/// How many, never their bytes (old packets: other tenants' data).
impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("spare", &self.spare.len())
            .finish()
    }
}

impl BufferPool {
    /// A buffer of `len` bytes whose content is left over from an earlier packet (zero
    /// where it never held one). The caller writes every byte it sends: zeroing 4 KiB
    /// only to overwrite it with the payload costs as much as building the headers.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut buffer) => {
                buffer.resize(len, 0);
                buffer
            }
            None => vec![0; len],
        }
    }

    /// Keeps `buffer` for a later packet (or frees it when enough are kept).
    pub fn put(&mut self, buffer: Vec<u8>) {
        if self.spare.len() < MAX_KEPT && buffer.capacity() <= MAX_KEPT_CAPACITY {
            self.spare.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_buffers_come_back_sized() {
        let mut pool = BufferPool::default();
        let mut first = pool.take(100);
        assert_eq!(first, vec![0; 100]);
        first.fill(0xab);
        let at = first.as_ptr();
        pool.put(first);
        let mut again = pool.take(60);
        assert_eq!(again.as_ptr(), at, "the spare buffer is reused");
        assert_eq!(again.len(), 60);
        again.truncate(10);
        pool.put(again);
        let grown = pool.take(80);
        assert_eq!(grown.as_ptr(), at);
        assert_eq!(grown[10..], [0; 70], "bytes past the old length are zero");
        assert_eq!(pool.take(200), vec![0; 200]);
    }

    #[test]
    fn oversized_and_surplus_buffers_are_freed() {
        let mut pool = BufferPool::default();
        pool.put(Vec::with_capacity(MAX_KEPT_CAPACITY + 1));
        assert!(pool.spare.is_empty());
        for _ in 0..MAX_KEPT + 5 {
            pool.put(vec![0; 16]);
        }
        assert_eq!(pool.spare.len(), MAX_KEPT);
    }
}
