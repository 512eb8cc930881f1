//! IPv4 identification solvers ([`IdentSolver`]), one per datagram length, cached: the
//! receive path checks each IPv4 datagram's ICRC with [`Solvers::check`], and the send
//! path corrects GSO segments' ICRCs with [`Solvers::get`].
//!
//! A solver costs 17 CRC passes over its length to build, so a peer choosing lengths
//! could make every datagram cost that much. Three things bound it: datagrams that match
//! with identification 0 (ferroce's, most stacks') need no solver; a solver is built only
//! for a datagram that parses as RoCE; and builds are rationed by a token bucket
//! ([`SolverLimits::builds_per_second`], [`SolverLimits::build_burst`]): a datagram
//! that needs a build over the ration is dropped and counted (RC retransmits it). The
//! cache keeps at most [`SolverLimits::cached`] solvers, dropping the least recently
//! used.

use std::net::Ipv4Addr;

use ferroce_wire::ident::{IdentSolver, Syndrome};

use crate::engine::Time;

/// Bounds on the IPv4 identification solvers a receiver keeps and builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SolverLimits {
    /// Solvers kept (one per datagram length); the least recently used goes first.
    pub cached: usize,
    /// Solvers built per second at most, on average; a datagram that needs one more is
    /// dropped (counted in `ThreadCounters::ident_over_budget`).
    pub builds_per_second: u32,
    /// Solvers built at once at most (after a quiet spell).
    pub build_burst: u32,
}

impl Default for SolverLimits {
    /// Room for every length a received RoCE datagram can have (a multiple of 4 up to
    /// the receive buffer, [`super::socket::MAX_DATAGRAM`]): about 290 KB, so a steady
    /// stream never rebuilds one. 2000 builds a second, 64 at once: at most 34 000 CRC
    /// passes a second (150 MB at 4 KiB, a few per cent of a core), and a new stream
    /// with many lengths is served within a second.
    fn default() -> SolverLimits {
        SolverLimits {
            cached: super::socket::MAX_DATAGRAM / 4,
            builds_per_second: 2000,
            build_burst: 64,
        }
    }
}

/// What the ICRC of a received IPv4 datagram says, its IP header unseen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ipv4Icrc {
    /// Valid with identification 0 and DF (all 32 bits match; no solver needed).
    IdentZero,
    /// Valid with this identification and DF (16 bits left to check with).
    Recovered(u16),
    /// Valid with no identification (or sent without DF): damaged.
    Damaged,
    /// Not a RoCE datagram (no BTH with a known opcode whose headers fit the length):
    /// not checked, no solver built.
    NotRoce,
    /// It needs a solver and the build ration is spent: dropped.
    OverBudget,
}

/// A cached solver and when it was last used.
#[derive(Debug)]
struct Cached {
    solver: IdentSolver,
    used: u64,
}

/// Solvers by UDP payload length (every RoCE datagram's is a multiple of 4).
#[derive(Debug)]
pub(super) struct Solvers {
    limits: SolverLimits,
    /// Indexed by length / 4.
    slots: Vec<Option<Box<Cached>>>,
    cached: usize,
    /// A clock of uses, for least-recently-used eviction.
    uses: u64,
    /// Builds allowed now (the token bucket), and when it was last topped up.
    tokens: u32,
    topped_up: Time,
    built: u64,
}

impl Default for Solvers {
    fn default() -> Solvers {
        Solvers::new(SolverLimits::default())
    }
}

impl Solvers {
    /// An empty cache with these limits (at least one solver is always kept).
    pub fn new(limits: SolverLimits) -> Solvers {
        Solvers {
            limits,
            slots: Vec::new(),
            cached: 0,
            uses: 0,
            tokens: limits.build_burst,
            topped_up: Time::ZERO,
            built: 0,
        }
    }

    /// A receive round at `now`: the builds earned since the last one become available.
    pub fn start_round(&mut self, now: Time) {
        let SolverLimits {
            builds_per_second,
            build_burst,
            ..
        } = self.limits;
        if self.tokens >= build_burst || builds_per_second == 0 {
            // Full (or never refilled): time spent full earns nothing.
            self.topped_up = now;
            return;
        }
        let per_build = 1_000_000_000 / u64::from(builds_per_second).max(1);
        let earned = now.as_nanos().saturating_sub(self.topped_up.as_nanos()) / per_build;
        if earned > 0 {
            let tokens = u64::from(self.tokens) + earned;
            self.tokens = tokens.min(u64::from(build_burst)) as u32;
            self.topped_up = Time::from_nanos(self.topped_up.as_nanos() + earned * per_build);
        }
    }

    /// Solvers built so far.
    pub fn built(&self) -> u64 {
        self.built
    }

    /// Checks the ICRC of `udp_payload`, received from `src` port `src_port` at `dst`
    /// port `dst_port`: identification 0 first, then a solver (built within the
    /// ration).
    pub fn check(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        src_port: u16,
        dst_port: u16,
        udp_payload: &[u8],
    ) -> Ipv4Icrc {
        let Ok(syndrome) = Syndrome::of(src, dst, src_port, dst_port, udp_payload) else {
            return Ipv4Icrc::NotRoce;
        };
        // A match for identification 0 needs nothing more (and the engine parses it
        // next); anything else is parsed before it may cost a solver.
        if syndrome.is_zero() {
            return Ipv4Icrc::IdentZero;
        }
        if ferroce_wire::packet::parse(udp_payload).is_err() {
            return Ipv4Icrc::NotRoce;
        }
        let len = udp_payload.len();
        if !self.is_cached(len) {
            if self.tokens == 0 {
                return Ipv4Icrc::OverBudget;
            }
            self.tokens -= 1;
        }
        match self.get(len).map(|solver| solver.solve(syndrome)) {
            Some(Ok(Some(ident))) => Ipv4Icrc::Recovered(ident),
            Some(_) => Ipv4Icrc::Damaged,
            None => Ipv4Icrc::NotRoce,
        }
    }

    fn is_cached(&self, len: usize) -> bool {
        len % 4 == 0 && matches!(self.slots.get(len / 4), Some(Some(_)))
    }

    /// The solver for datagrams of `len` bytes (built now if not cached, whatever the
    /// budget), or `None` when no RoCE datagram has that length.
    pub fn get(&mut self, len: usize) -> Option<&IdentSolver> {
        if len % 4 != 0 {
            return None;
        }
        self.uses += 1;
        let index = len / 4;
        if !matches!(self.slots.get(index), Some(Some(_))) {
            let solver = IdentSolver::new(len).ok()?;
            self.built += 1;
            if self.cached >= self.limits.cached.max(1) {
                self.evict_least_recent();
            }
            if self.slots.len() <= index {
                self.slots.resize_with(index + 1, || None);
            }
            self.slots[index] = Some(Box::new(Cached { solver, used: 0 }));
            self.cached += 1;
        }
        let cached = self.slots.get_mut(index)?.as_mut()?;
        cached.used = self.uses;
        Some(&cached.solver)
    }

    fn evict_least_recent(&mut self) {
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| slot.as_ref().map(|c| (c.used, i)))
            .min();
        if let Some((_, index)) = oldest {
            self.slots[index] = None;
            self.cached -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroce_wire::icrc::{self, Envelope};

    #[test]
    fn solvers_match_fresh_ones_whatever_the_order() {
        let mut solvers = Solvers::default();
        for len in [1052, 1052, 300, 1052, 4124, 300] {
            let fresh = IdentSolver::new(len).unwrap();
            assert_eq!(solvers.get(len), Some(&fresh), "length {len}");
        }
        assert_eq!((solvers.cached, solvers.built()), (3, 3));
        assert!(solvers.get(3).is_none(), "shorter than any RoCE datagram");
        assert!(solvers.get(1053).is_none(), "not a multiple of 4");
    }

    #[test]
    fn the_least_recently_used_solver_goes_first() {
        let mut solvers = Solvers::new(SolverLimits {
            cached: 2,
            ..SolverLimits::default()
        });
        solvers.get(100);
        solvers.get(200);
        solvers.get(100);
        solvers.get(300); // evicts 200, used longest ago
        assert_eq!(solvers.cached, 2);
        assert!(solvers.is_cached(100) && solvers.is_cached(300));
        assert!(!solvers.is_cached(200));
        assert_eq!(solvers.built(), 3);
    }

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// An RC SEND Only of `len` bytes in all (BTH, payload, ICRC) sent with `ident` and DF.
    fn send_only(len: usize, ident: u16) -> Vec<u8> {
        let mut payload = vec![0x5a; len];
        payload[..12].copy_from_slice(&[0x04, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 1]);
        icrc::fill(&Envelope::ipv4(SRC, DST, ident, 0xc000), &mut payload).unwrap();
        payload
    }

    fn check(solvers: &mut Solvers, payload: &[u8]) -> Ipv4Icrc {
        solvers.check(SRC, DST, 0xc000, 4791, payload)
    }

    #[test]
    fn ident_zero_needs_no_solver() {
        let mut solvers = Solvers::default();
        for len in (16..=4096).step_by(4) {
            assert_eq!(check(&mut solvers, &send_only(len, 0)), Ipv4Icrc::IdentZero);
        }
        assert_eq!(solvers.built(), 0);
    }

    #[test]
    fn other_idents_are_recovered_and_damage_is_found() {
        let mut solvers = Solvers::default();
        let mut packet = send_only(1052, 0xcd1e);
        assert_eq!(check(&mut solvers, &packet), Ipv4Icrc::Recovered(0xcd1e));
        packet[100] ^= 1;
        assert_eq!(check(&mut solvers, &packet), Ipv4Icrc::Damaged);
        assert_eq!(solvers.built(), 1);
    }

    /// A stream of datagrams that do not parse as RoCE (unknown opcode, headers longer
    /// than the datagram, a length no RoCE datagram has) builds nothing.
    #[test]
    fn junk_builds_no_solvers() {
        let mut solvers = Solvers::new(SolverLimits {
            build_burst: u32::MAX,
            ..SolverLimits::default()
        });
        for len in 16..2000usize {
            let mut junk = send_only(len.next_multiple_of(4), 7);
            junk.truncate(len);
            let expect_roce = len % 4 == 0;
            let got = check(&mut solvers, &junk);
            assert_eq!(
                got != Ipv4Icrc::NotRoce,
                expect_roce,
                "length {len}: {got:?}"
            );
            junk[0] = 0x1f; // reserved RC opcode
            assert_eq!(check(&mut solvers, &junk), Ipv4Icrc::NotRoce);
            junk[0] = 0x0a; // RDMA WRITE Only: a 16-byte RETH after the BTH
            junk.truncate(28);
            assert_eq!(check(&mut solvers, &junk), Ipv4Icrc::NotRoce);
        }
        assert_eq!(solvers.built(), 496, "one per RoCE length, 16..2000 step 4");
    }

    /// A peer sending a new length every datagram gets `build_burst` solvers at once
    /// and `builds_per_second` after that, however many rounds it causes; the rest are
    /// dropped, and a cached length still passes.
    #[test]
    fn a_stream_of_odd_lengths_costs_at_most_the_ration() {
        let mut solvers = Solvers::new(SolverLimits {
            cached: 16,
            builds_per_second: 1000,
            build_burst: 3,
        });
        let mut outcomes = Vec::new();
        let mut len = 64;
        // Ten rounds a millisecond apart, then one a second later.
        let rounds = (0..10u64).map(|ms| ms * 1_000_000).chain([1_009_000_000]);
        for (round, at) in rounds.enumerate() {
            solvers.start_round(Time::from_nanos(at));
            let first = len;
            for _ in 0..20 {
                outcomes.push(check(&mut solvers, &send_only(len, 1)));
                len += 4;
            }
            assert_eq!(
                check(&mut solvers, &send_only(first, 9)),
                Ipv4Icrc::Recovered(9),
                "round {round}: the length built first stays"
            );
        }
        let recovered = outcomes.iter().filter(|o| **o == Ipv4Icrc::Recovered(1));
        let over = outcomes.iter().filter(|o| **o == Ipv4Icrc::OverBudget);
        // 3 at once, 1 a millisecond for 9 ms, then 3 again (the burst, not 1000).
        assert_eq!((recovered.count(), over.count()), (15, 205));
        assert_eq!((solvers.built(), solvers.cached), (15, 15));
    }
}
