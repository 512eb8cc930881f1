//! The RC requester's retransmit timer: a round-trip estimate (RFC 6298's SRTT and
//! RTTVAR) taken from the acknowledgements of packets sent once (Karn's rule), a
//! timeout that follows it between [`MIN_RETRANSMIT_TIMEOUT`] and the negotiated IB
//! timeout, and the rule for when a timeout spends one of `retry_cnt`.
//!
//! The negotiated timeout (4.096 µs × 2^timeout) stays what `retry_cnt` counts: a retry
//! is spent only when that long has passed without progress, as in rxe, so a dead peer
//! fails a WR after the same time as before. Timeouts that fire earlier, because the
//! measured round trip says the packet is lost, resend (go-back-N) without spending one.
//! The wire sees nothing new: a retransmission sooner than the negotiated timeout is a
//! duplicate any responder handles.

use std::time::Duration;

use ferroce_wire::Psn;

use crate::engine::Time;

/// The adaptive timeout never goes below this. The engine's threads share cores, and a
/// busy round holds an ACK back by about 0.6 ms (FINDINGS, "An engine thread that takes
/// over the sending"); a timeout much shorter than that would resend a window whenever a
/// thread is descheduled. The measured variation usually keeps the timeout above it.
pub const MIN_RETRANSMIT_TIMEOUT: Duration = Duration::from_micros(1000);

/// The smallest variation term (RFC 6298's clock granularity G): with a perfectly
/// steady round trip the timeout is still a little more than it.
const GRANULARITY: Duration = Duration::from_micros(1);

/// Consecutive timeouts double the adaptive timeout up to this many times (it is capped
/// by the negotiated timeout long before).
const MAX_BACKOFF: u32 = 16;

/// How a timeout that fired is to be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Earlier than the negotiated timeout: resend, and spend no retry.
    Early,
    /// The negotiated timeout has passed without progress: spend a retry, and resend.
    Retry,
}

/// The retransmit timer of one RC requester.
#[derive(Debug, Default)]
pub(crate) struct RetransmitTimer {
    /// When the timer fires.
    fire_at: Option<Time>,
    /// When a firing spends a retry: the negotiated timeout after the timer was armed
    /// with nothing pending, after progress, or after the last retry.
    retry_at: Option<Time>,
    /// Smoothed round trip; `None` until the first sample.
    srtt: Option<Duration>,
    /// Round-trip variation.
    rttvar: Duration,
    /// Timeouts since the last progress: each doubles the adaptive timeout.
    backoff: u32,
    /// The packet being timed and when it was sent (one packet at a time, and never an ambiguous copy: see [`Self::sent`]).
    timing: Option<Timed>,
    /// A rewind on evidence of a loss (a NAK, a gap in READ responses) to this PSN: its
    /// original never arrived, so an ACK of the copy about to be resent is the copy's.
    resend_lost: Option<Psn>,
}

#[derive(Debug, Clone, Copy)]
struct Timed {
    psn: Psn,
    sent: Time,
}

impl RetransmitTimer {
    /// When the timer fires, if it runs.
    pub fn fire_at(&self) -> Option<Time> {
        self.fire_at
    }

    /// The smoothed round trip measured so far.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The timeout now: SRTT + 4 RTTVAR, at least [`MIN_RETRANSMIT_TIMEOUT`], doubled
    /// per timeout since the last progress, at most `limit` (the negotiated timeout). Without a
    /// sample yet, `limit` itself.
    pub fn timeout(&self, limit: Duration) -> Duration {
        let Some(srtt) = self.srtt else {
            return limit;
        };
        let base = srtt + (self.rttvar * 4).max(GRANULARITY);
        base.max(MIN_RETRANSMIT_TIMEOUT)
            .saturating_mul(1 << self.backoff.min(MAX_BACKOFF))
            .min(limit)
    }

    /// Starts the timer if it is not running (a packet went out). `limit` is the
    /// negotiated timeout; `None` (timeout 0) means no timer at all, as in rxe.
    pub fn arm(&mut self, now: Time, limit: Option<Duration>) {
        let Some(limit) = limit else {
            return;
        };
        if self.fire_at.is_none() {
            let retry_at = *self.retry_at.get_or_insert(now + limit);
            self.fire_at = Some((now + self.timeout(limit)).min(retry_at));
        }
    }

    /// Progress: acknowledged up to (not including) `comp_psn`. Takes a round-trip
    /// sample (and drops the back-off) if the timed packet is covered, and restarts the
    /// timer when `outstanding` (else stops it).
    pub fn progress(
        &mut self,
        now: Time,
        comp_psn: Psn,
        outstanding: bool,
        limit: Option<Duration>,
    ) {
        if let Some(timed) = self.timing {
            if timed.psn.is_before(comp_psn) {
                self.timing = None;
                self.sample(now.saturating_since(timed.sent));
                // Karn's algorithm: the backed-off timeout stays until a packet sent
                // once is acknowledged. Against rxe in a slow guest, clearing it on any
                // progress let every late ACK set off another resend of the window.
                self.backoff = 0;
            }
        }
        self.stop();
        if outstanding {
            self.arm(now, limit);
        }
    }

    /// Packet `psn` went out at `now` (`resent`: not for the first time). It is timed unless one is being timed
    /// already, or it is a copy whose ACK could answer an earlier one (Karn's rule). A
    /// resent packet whose original is known lost (see [`Self::rewound_for_loss`]) is
    /// unambiguous: without it, a link that loses something in every window would never
    /// be measured.
    pub fn sent(&mut self, psn: Psn, now: Time, resent: bool) {
        let known_lost = self.resend_lost == Some(psn);
        self.resend_lost = None;
        if self.timing.is_none() && (!resent || known_lost) {
            self.timing = Some(Timed { psn, sent: now });
        }
    }

    /// The requester rewound: what is being timed will be sent again, so its ACK would
    /// not say which copy it answers (Karn's rule). The timer starts again with the
    /// next packet; the retry deadline stays.
    pub fn rewound(&mut self) {
        self.timing = None;
        self.resend_lost = None;
        self.fire_at = None;
    }

    /// The requester rewound to `psn` because the peer showed it lost (a NAK naming it,
    /// a later READ response): the copy of `psn` about to go is the only one.
    pub fn rewound_for_loss(&mut self, psn: Psn) {
        self.rewound();
        self.resend_lost = Some(psn);
    }

    /// The peer is still answering requests from before a rewind (READ responses
    /// behind a gap, dropped): the resent request is queued behind them, so the timer
    /// starts again, retry deadline included, instead of asking a third time. A peer
    /// that answers is alive: `retry_cnt` counts timeouts without an answer, and a
    /// responder whose queued answers take longer than the negotiated timeout (rxe in a
    /// slow guest: 256 KiB READs at 6 MB/s) would otherwise get a replay stacked per
    /// timeout and never catch up.
    pub fn peer_busy(&mut self, now: Time, limit: Option<Duration>) {
        if self.fire_at.is_some() {
            self.stop();
            self.arm(now, limit);
        }
    }

    /// A retry was spent another way (a PSN sequence NAK): the next negotiated timeout
    /// counts from the next packet sent.
    pub fn retry_spent(&mut self) {
        self.retry_at = None;
    }

    /// Nothing to wait for (all acknowledged, an RNR wait, the QP in error).
    pub fn stop(&mut self) {
        self.fire_at = None;
        self.retry_at = None;
    }

    /// Checks the timer at `now`: `None` if it has not fired; else whether this timeout
    /// spends a retry. Either way the timer stops and the next one is twice as long.
    pub fn expire(&mut self, now: Time) -> Option<Expiry> {
        if self.fire_at.is_none_or(|at| at > now) {
            return None;
        }
        self.fire_at = None;
        self.timing = None;
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            Some(Expiry::Retry)
        } else {
            Some(Expiry::Early)
        }
    }

    /// RFC 6298 section 2: the first sample sets SRTT and RTTVAR = R/2; later ones move
    /// RTTVAR by 1/4 of |SRTT - R| and SRTT by 1/8 of R.
    fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let deviation = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + deviation) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(67);

    fn at(micros: u64) -> Time {
        Time::ZERO + Duration::from_micros(micros)
    }

    #[test]
    fn without_a_sample_the_timeout_is_the_negotiated_one_and_spends_a_retry() {
        let mut timer = RetransmitTimer::default();
        timer.arm(at(0), Some(LIMIT));
        assert_eq!(timer.fire_at(), Some(at(0) + LIMIT));
        assert_eq!(timer.expire(at(1)), None);
        assert_eq!(timer.expire(at(0) + LIMIT), Some(Expiry::Retry));
        assert_eq!(timer.fire_at(), None);
    }

    #[test]
    fn timeout_zero_means_no_timer() {
        let mut timer = RetransmitTimer::default();
        timer.arm(at(0), None);
        assert_eq!(timer.fire_at(), None);
    }

    #[test]
    fn the_timeout_follows_the_round_trip_within_its_bounds() {
        let mut timer = RetransmitTimer::default();
        timer.arm(at(0), Some(LIMIT));
        timer.sent(Psn::new(10), at(0), false);
        timer.progress(at(2000), Psn::new(11), true, Some(LIMIT));
        // SRTT 2 ms, RTTVAR 1 ms: 6 ms.
        assert_eq!(timer.srtt(), Some(Duration::from_millis(2)));
        assert_eq!(timer.timeout(LIMIT), Duration::from_millis(6));
        assert_eq!(timer.fire_at(), Some(at(8000)));
        // A tiny round trip stays above the floor; a cap below it wins.
        let mut fast = RetransmitTimer::default();
        fast.sent(Psn::new(0), at(0), false);
        fast.progress(at(3), Psn::new(1), false, Some(LIMIT));
        assert_eq!(fast.timeout(LIMIT), MIN_RETRANSMIT_TIMEOUT);
        assert_eq!(
            fast.timeout(Duration::from_micros(8)),
            Duration::from_micros(8)
        );
        // Backing off doubles, up to the negotiated timeout.
        for _ in 0..20 {
            timer.arm(at(8000), Some(LIMIT));
            let fire = timer.fire_at().unwrap();
            timer.expire(fire);
        }
        assert_eq!(timer.timeout(LIMIT), LIMIT);
    }

    #[test]
    fn early_timeouts_spend_no_retry_until_the_negotiated_timeout_passes() {
        let mut timer = RetransmitTimer::default();
        timer.sent(Psn::new(0), at(0), false);
        timer.progress(at(100), Psn::new(1), true, Some(LIMIT));
        // Progress at 100 µs: the retry deadline is 67 ms later.
        let deadline = at(100) + LIMIT;
        let mut early = 0;
        loop {
            let fire = timer.fire_at().unwrap();
            assert!(fire <= deadline);
            match timer.expire(fire).unwrap() {
                Expiry::Early => early += 1,
                Expiry::Retry => {
                    assert_eq!(fire, deadline);
                    break;
                }
            }
            timer.rewound();
            timer.arm(fire, Some(LIMIT));
        }
        // 1, 2, 4, 8, 16, 32 ms of back-off fit before 67 ms.
        assert_eq!(early, 6);
        // The next retry is a whole negotiated timeout later.
        timer.arm(deadline, Some(LIMIT));
        assert_eq!(timer.fire_at(), Some(deadline + LIMIT));
    }

    #[test]
    fn karn_a_rewind_discards_the_packet_being_timed() {
        let mut timer = RetransmitTimer::default();
        timer.sent(Psn::new(5), at(0), false);
        timer.rewound();
        // Resent: its ACK might answer the first copy.
        timer.sent(Psn::new(5), at(10), true);
        timer.progress(at(50_000), Psn::new(6), false, Some(LIMIT));
        assert_eq!(timer.srtt(), None);
        // Only one packet is timed at a time; an ACK before it takes no sample.
        timer.sent(Psn::new(6), at(50_000), false);
        timer.sent(Psn::new(7), at(50_010), false);
        timer.progress(at(50_020), Psn::new(6), true, Some(LIMIT));
        assert_eq!(timer.srtt(), None);
        timer.progress(at(50_030), Psn::new(7), true, Some(LIMIT));
        assert_eq!(timer.srtt(), Some(Duration::from_micros(30)));
        // A copy resent because the peer showed its original lost is timed.
        timer.rewound_for_loss(Psn::new(7));
        timer.sent(Psn::new(7), at(60_000), true);
        timer.progress(at(60_010), Psn::new(8), true, Some(LIMIT));
        assert_eq!(timer.srtt(), Some(Duration::from_nanos(27_500)));
    }
}
