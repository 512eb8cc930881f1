//! The CM's clock arithmetic, as Linux's `ib_cm` does it (`drivers/infiniband/core/cm.c`):
//! IBA time codes (4.096 µs × 2^t) turned into the milliseconds the MAD layer waits,
//! and the local ACK timeout computed from an ACK delay and a packet life time.

use std::time::Duration;

/// `cm_convert_to_ms`: an IBA time code as whole milliseconds, rounded the kernel's way
/// (`1 << max(t - 8, 0)` ms; 4.096 µs × 2^8 ≈ 1 ms).
pub fn cm_duration(code: u8) -> Duration {
    let shift = u32::from(code.min(31)).saturating_sub(8);
    Duration::from_millis(1u64 << shift)
}

/// `cm_ack_timeout`: the local ACK timeout code for a path whose packet life time is
/// `packet_life_time` towards a CA that delays ACKs by `ca_ack_delay` (IBA: 4.096 µs ×
/// 2^t ≥ ack delay + 2 × life time). The larger term is taken and rounded up by one
/// only when the other is within a factor of two of it; at most 31.
pub fn ack_timeout(ca_ack_delay: u8, packet_life_time: u8) -> u8 {
    let life = packet_life_time.saturating_add(1);
    let timeout = if life >= ca_ack_delay {
        life + u8::from(ca_ack_delay >= life - 1)
    } else {
        ca_ack_delay + u8::from(life >= ca_ack_delay - 1)
    };
    timeout.min(31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_become_the_kernels_milliseconds() {
        assert_eq!(cm_duration(0), Duration::from_millis(1));
        assert_eq!(cm_duration(8), Duration::from_millis(1));
        // rdma_cm's CMA_CM_RESPONSE_TIMEOUT (20) is 4096 ms, its RoCE packet life
        // time (18) 1024 ms: a REQ waits 2 × 1024 + 4096 ms for its REP.
        assert_eq!(cm_duration(20), Duration::from_millis(4096));
        assert_eq!(cm_duration(18), Duration::from_millis(1024));
        assert_eq!(cm_duration(40), cm_duration(31));
    }

    #[test]
    fn ack_timeout_matches_rpings_req() {
        // rping's REQ from rxe (ack delay 15, packet life time 18) says 19.
        assert_eq!(ack_timeout(15, 18), 19);
        // Within a factor of two: rounded up.
        assert_eq!(ack_timeout(15, 14), 16);
        assert_eq!(ack_timeout(20, 10), 20);
        assert_eq!(ack_timeout(20, 18), 21);
        assert_eq!(ack_timeout(31, 31), 31);
    }
}
