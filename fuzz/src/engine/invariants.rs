//! Queue bounds: every queue the engine reports must have a bound and stay within it.

use ferroce_transport::engine::QueueDepth;

/// Whether a packet's P_Key lets it act on the QP: rxe's match against the port's only
/// key, the default 0xFFFF, needs the low 15 bits all ones (either membership).
pub fn pkey_matches(pkey: u16) -> bool {
    pkey & 0x7fff == 0x7fff
}

/// Panics on a queue with no bound or beyond it.
pub fn check_queues(ns: usize, depths: &[QueueDepth]) {
    for depth in depths {
        match depth.bound {
            Some(bound) => assert!(
                depth.len <= bound,
                "namespace {ns}: {:?} holds {} entries, beyond its bound {bound}",
                depth.queue,
                depth.len
            ),
            None => panic!(
                "namespace {ns}: {:?} has no bound (holds {})",
                depth.queue, depth.len
            ),
        }
    }
}
