//! IB timer encodings: the local ACK timeout (`4.096 µs × 2^t`) and the RNR NAK timer
//! table (IBA table 45), as rxe uses them.

use std::time::Duration;

/// The retransmit timeout an RC QP's `timeout` attribute encodes: 4.096 µs × 2^t;
/// `None` for 0 ("infinite": no retransmit timer). Values above 31 are clamped.
pub fn ack_timeout(code: u8) -> Option<Duration> {
    if code == 0 {
        return None;
    }
    let shift = u32::from(code.min(31));
    Some(Duration::from_nanos(4096u64 << shift))
}

/// RNR NAK timer values in microseconds, indexed by the 5-bit code (IBA table 45).
const RNR_TIMER_MICROS: [u32; 32] = [
    655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560, 3_840,
    5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880, 163_840,
    245_760, 327_680, 491_520,
];

/// The delay an RNR NAK timer code asks for (only the low five bits count).
pub fn rnr_timeout(code: u8) -> Duration {
    Duration::from_micros(u64::from(RNR_TIMER_MICROS[usize::from(code & 0x1f)]))
}

/// `retry_cnt` and `rnr_retry` value meaning "retry forever".
pub const RETRY_INFINITE: u8 = 7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_timeout_is_4096ns_times_two_to_the_t() {
        assert_eq!(ack_timeout(0), None);
        assert_eq!(ack_timeout(1), Some(Duration::from_nanos(8192)));
        // rc_pingpong's default 14: 67.1 ms.
        assert_eq!(ack_timeout(14), Some(Duration::from_nanos(4096 * 16384)));
        assert_eq!(ack_timeout(40), ack_timeout(31));
    }

    #[test]
    fn rnr_table_matches_iba() {
        assert_eq!(rnr_timeout(0), Duration::from_micros(655_360));
        assert_eq!(rnr_timeout(1), Duration::from_micros(10));
        assert_eq!(rnr_timeout(12), Duration::from_micros(640));
        assert_eq!(rnr_timeout(31), Duration::from_micros(491_520));
        assert_eq!(rnr_timeout(32 + 1), rnr_timeout(1));
    }
}
