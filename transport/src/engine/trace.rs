//! The engine's drop trace point. Every other event is one `tracing` line where it
//! happens; drops share this macro so that each reason is counted and reported in one
//! place, under the name of its counter.
//!
//! Levels: `debug!` for what an operator follows a QP by (state changes, NAKs sent and
//! received, retransmit timeouts and go-back-N, RNR waits, retry exhaustion, drops);
//! `trace!` for each retransmitted packet. With no subscriber, or one that filters them
//! out, each is a load and a compare on the engine's path.

/// Counts a dropped packet in `$counters.drops.$reason` and reports it at `debug!`
/// with the reason (the counter's name) and the fields given after it, in `tracing`'s
/// syntax (`ns = %ns, qpn = %qpn`).
macro_rules! count_drop {
    ($counters:expr, $reason:ident $(, $($field:tt)+)?) => {{
        $counters.drops.$reason += 1;
        tracing::debug!($($($field)+,)? reason = stringify!($reason), "packet dropped");
    }};
}

pub(crate) use count_drop;
