//! Recovering the IPv4 identification of a received RoCEv2 datagram.
//!
//! The ICRC covers the IPv4 identification and flags, but a UDP socket does not show
//! them to the receiver. Two facts narrow them down. Senders set "don't fragment": rxe
//! always does (every packet in `testdata/pcaps` has DF), and so does ferroce. And most
//! datagrams carry identification 0: Linux gives it to every datagram of an
//! unconnected socket with DF, so ferroce and anything else sending that way carry it.
//!
//! So a receiver first computes the ICRC for identification 0 with DF ([`Syndrome::of`]):
//! when it matches the carried one, nothing else is needed. Otherwise the
//! identification is an unknown. CRC-32 is affine over GF(2): flipping bit
//! `i` of the identification changes the ICRC by a fixed vector `B_i` that depends only
//! on how many bytes follow it (the datagram length). So the syndrome `s` (computed ICRC
//! XOR carried ICRC) must equal `Σ x_i·B_i`: 32 equations in 16 unknowns. The 16 vectors
//! are independent (CRC-32 catches every burst up to 32 bits), so there is at most one
//! solution ([`IdentSolver::solve`]), and the 16 equations left over are the integrity
//! check: a damaged datagram passes with probability 2^-16 (2^16 of the 2^32 syndromes
//! solve). That holds for every datagram, identification 0 included: trying 0 first
//! saves the solver, but damage to an ident-0 datagram may still solve for another
//! identification. DF is not an unknown; a datagram sent without it fails like a
//! damaged one.
//!
//! Building a solver costs 17 CRCs over the datagram length (microseconds); solving is a
//! few dozen bit operations, so receivers keep one solver per datagram length they see.

use smoltcp::wire::Ipv4Address;

use crate::icrc::{self, Envelope, IpFields, IPV4_DONT_FRAG};
use crate::{Error, Result, ICRC_LEN};

/// Number of unknown bits: the 16-bit identification.
const UNKNOWNS: usize = 16;

/// The IPv4 identification and DF flag that a datagram's ICRC covers: recovered by an
/// [`IdentSolver`] (always with DF), or read from the IP header where it can be seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recovered {
    /// The IPv4 identification the sender used.
    pub ident: u16,
    /// Whether the sender set "don't fragment".
    pub dont_frag: bool,
}

/// How far a received IPv4 datagram's ICRC is from the one computed for
/// identification 0 with DF: zero when they match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syndrome {
    value: u32,
    udp_payload_len: usize,
}

impl Syndrome {
    /// The syndrome of `udp_payload` (BTH to ICRC) sent from `src` port `src_port` to
    /// `dst` port `dst_port`: one ICRC pass over the datagram.
    pub fn of(
        src: Ipv4Address,
        dst: Ipv4Address,
        src_port: u16,
        dst_port: u16,
        udp_payload: &[u8],
    ) -> Result<Syndrome> {
        let envelope = Envelope {
            ip: IpFields::V4 {
                src,
                dst,
                ident: 0,
                flags_frag: IPV4_DONT_FRAG,
            },
            src_port,
            dst_port,
        };
        let value = icrc::compute(&envelope, udp_payload)? ^ icrc::carried(udp_payload)?;
        Ok(Syndrome {
            value,
            udp_payload_len: udp_payload.len(),
        })
    }

    /// The ICRC is valid for identification 0 with DF (all 32 bits match): no solver is
    /// needed.
    pub fn is_zero(self) -> bool {
        self.value == 0
    }

    /// The UDP payload length of the datagram: the [`IdentSolver`] to ask.
    pub fn udp_payload_len(self) -> usize {
        self.udp_payload_len
    }
}

/// One row of the reduced basis: a combination of `B_i` and which `i` it combines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Row {
    pivot: u32,
    vector: u32,
    unknowns: u16,
}

/// Solves for the IPv4 identification of datagrams of one UDP payload length sent with
/// DF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentSolver {
    udp_payload_len: usize,
    /// `B_i`: how bit `i` of the identification changes the ICRC.
    basis: [u32; UNKNOWNS],
    rows: [Row; UNKNOWNS],
}

/// The ICRC of a datagram of `udp_payload_len` zero bytes (any content gives the same
/// differences) sent with `ident` and DF.
fn zero_payload_icrc(udp_payload_len: usize, ident: u16) -> u32 {
    const ZEROES: [u8; 256] = [0; 256];
    let envelope = Envelope {
        ip: IpFields::V4 {
            src: Ipv4Address::UNSPECIFIED,
            dst: Ipv4Address::UNSPECIFIED,
            ident,
            flags_frag: IPV4_DONT_FRAG,
        },
        src_port: 0,
        dst_port: 0,
    };
    let mut hasher = icrc::Hasher::new(&envelope, udp_payload_len);
    let mut left = udp_payload_len - ICRC_LEN;
    while left > 0 {
        let n = left.min(ZEROES.len());
        hasher.update(&ZEROES[..n]);
        left -= n;
    }
    hasher.finish()
}

impl IdentSolver {
    /// A solver for datagrams whose UDP payload (BTH to ICRC) is `udp_payload_len` long.
    pub fn new(udp_payload_len: usize) -> Result<IdentSolver> {
        if !(crate::bth::HEADER_LEN + ICRC_LEN..=0xffff - 28).contains(&udp_payload_len) {
            return Err(Error::Truncated);
        }
        let base = zero_payload_icrc(udp_payload_len, 0);
        let mut rows = [Row::default(); UNKNOWNS];
        let mut basis = [0u32; UNKNOWNS];
        // Every unknown adds one independent row, so row `unknown` is the new one.
        for unknown in 0..UNKNOWNS {
            let mut vector = zero_payload_icrc(udp_payload_len, 1 << unknown) ^ base;
            basis[unknown] = vector;
            let mut unknowns = 1u16 << unknown;
            // Reduce by the rows so far, then keep it as a new row (Gauss–Jordan).
            for row in &rows[..unknown] {
                if vector & row.pivot != 0 {
                    vector ^= row.vector;
                    unknowns ^= row.unknowns;
                }
            }
            if vector == 0 {
                // Cannot happen for CRC-32 (bursts ≤ 32 bits are always detected).
                return Err(Error::Malformed);
            }
            let pivot = 1u32 << vector.trailing_zeros();
            for row in &mut rows[..unknown] {
                if row.vector & pivot != 0 {
                    row.vector ^= vector;
                    row.unknowns ^= unknowns;
                }
            }
            rows[unknown] = Row {
                pivot,
                vector,
                unknowns,
            };
        }
        Ok(IdentSolver {
            udp_payload_len,
            basis,
            rows,
        })
    }

    /// The UDP payload length this solver is for.
    pub fn udp_payload_len(&self) -> usize {
        self.udp_payload_len
    }

    /// How the ICRC of a datagram of this length changes when it is sent with `ident`
    /// instead of 0 (DF unchanged): XOR it into the ICRC. Senders use it to fix up each
    /// segment of a UDP GSO batch, which the kernel numbers 0, 1, 2, … instead of 0.
    pub fn icrc_delta(&self, ident: u16) -> u32 {
        (0..16)
            .filter(|bit| ident & (1 << bit) != 0)
            .fold(0, |acc, bit| acc ^ self.basis[bit])
    }

    /// The identification with which a datagram of this length and `syndrome` has a
    /// valid ICRC (sent with DF), or `None` when there is none: the datagram is damaged.
    /// A syndrome of another length is an error.
    pub fn solve(&self, syndrome: Syndrome) -> Result<Option<u16>> {
        if syndrome.udp_payload_len != self.udp_payload_len {
            return Err(Error::Malformed);
        }
        let mut residue = syndrome.value;
        let mut ident = 0u16;
        for row in &self.rows {
            if residue & row.pivot != 0 {
                residue ^= row.vector;
                ident ^= row.unknowns;
            }
        }
        Ok((residue == 0).then_some(ident))
    }

    /// Finds the identification with which `udp_payload` (sent with DF from `src` port
    /// `src_port` to `dst` port `dst_port`) has a valid ICRC, or `None` when no choice
    /// makes it valid: the datagram is damaged.
    pub fn recover(
        &self,
        src: Ipv4Address,
        dst: Ipv4Address,
        src_port: u16,
        dst_port: u16,
        udp_payload: &[u8],
    ) -> Result<Option<Recovered>> {
        if udp_payload.len() != self.udp_payload_len {
            return Err(Error::Malformed);
        }
        let syndrome = Syndrome::of(src, dst, src_port, dst_port, udp_payload)?;
        Ok(self.solve(syndrome)?.map(|ident| Recovered {
            ident,
            dont_frag: true,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    const SRC: Ipv4Address = Ipv4Address::new(10, 77, 0, 11);
    const DST: Ipv4Address = Ipv4Address::new(10, 77, 0, 1);

    fn datagram(len: usize, fill: u8, ident: u16, dont_frag: bool) -> (Envelope, Vec<u8>) {
        let mut payload = vec![fill; len];
        payload[0] = 0x04;
        payload[1] = 0;
        let envelope = Envelope {
            ip: IpFields::V4 {
                src: SRC,
                dst: DST,
                ident,
                flags_frag: if dont_frag { IPV4_DONT_FRAG } else { 0 },
            },
            src_port: 0xc123,
            dst_port: 4791,
        };
        icrc::fill(&envelope, &mut payload).unwrap();
        (envelope, payload)
    }

    fn recover(solver: &IdentSolver, payload: &[u8]) -> Option<Recovered> {
        solver.recover(SRC, DST, 0xc123, 4791, payload).unwrap()
    }

    /// pcaps/host_demo_rc_pingpong.pcap: rxe's Send Only, 10.77.0.11:54099 to
    /// 10.77.0.1:4791, IP ID 0xcd1e, DF.
    fn captured_rxe_send() -> Vec<u8> {
        let hex = concat!(
            "0400ffff00000123805405747b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b",
            "7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7be495371e"
        );
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn recovers_a_captured_rxe_ident() {
        let bytes = captured_rxe_send();
        let solver = IdentSolver::new(bytes.len()).unwrap();
        let got = solver.recover(SRC, DST, 54099, 4791, &bytes).unwrap();
        assert_eq!(
            got,
            Some(Recovered {
                ident: 0xcd1e,
                dont_frag: true
            })
        );
        let syndrome = Syndrome::of(SRC, DST, 54099, 4791, &bytes).unwrap();
        assert!(!syndrome.is_zero());
        assert_eq!(solver.solve(syndrome), Ok(Some(0xcd1e)));
    }

    #[test]
    fn ident_zero_with_df_needs_no_solver() {
        for len in [20usize, 64, 1052, 4124] {
            let (_, payload) = datagram(len, 0x5a, 0, true);
            let syndrome = Syndrome::of(SRC, DST, 0xc123, 4791, &payload).unwrap();
            assert!(syndrome.is_zero(), "length {len}");
            assert_eq!(syndrome.udp_payload_len(), len);
        }
    }

    #[test]
    fn a_syndrome_of_another_length_is_refused() {
        let (_, payload) = datagram(64, 0x5a, 7, true);
        let syndrome = Syndrome::of(SRC, DST, 0xc123, 4791, &payload).unwrap();
        let solver = IdentSolver::new(68).unwrap();
        assert_eq!(solver.solve(syndrome), Err(Error::Malformed));
    }

    /// rxe always sets DF, so DF is not an unknown: a datagram sent without it (whatever
    /// its identification) does not solve, which leaves 16 check bits instead of 15.
    #[test]
    fn a_datagram_without_df_is_refused() {
        for len in [20usize, 64, 1052, 4124] {
            let solver = IdentSolver::new(len).unwrap();
            for ident in [0u16, 1, 0xcd1e, 0xffff] {
                let (_, payload) = datagram(len, 0x5a, ident, false);
                assert_eq!(
                    recover(&solver, &payload),
                    None,
                    "length {len}, ident {ident}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn recovers_any_ident(len in (4usize..1100).prop_map(|n| n * 4), ident: u16, fill: u8) {
            let (_, payload) = datagram(len, fill, ident, true);
            let solver = IdentSolver::new(len).unwrap();
            prop_assert_eq!(recover(&solver, &payload), Some(Recovered { ident, dont_frag: true }));
        }
    }

    #[test]
    fn icrc_delta_moves_a_datagram_to_another_ident() {
        for ident in [1u16, 2, 7, 0x8000, 0xffff] {
            let (_, at_zero) = datagram(1052, 0x33, 0, true);
            let (_, at_ident) = datagram(1052, 0x33, ident, true);
            let solver = IdentSolver::new(1052).unwrap();
            let carried = |b: &[u8]| icrc::carried(b).unwrap();
            assert_eq!(
                carried(&at_zero) ^ solver.icrc_delta(ident),
                carried(&at_ident)
            );
        }
    }

    /// Every single-bit error in datagrams of a few lengths: the undetected fraction
    /// must stay near the 2^-16 theory.
    #[test]
    fn single_bit_errors_are_caught_as_the_theory_says() {
        let (mut tried, mut missed) = (0u32, 0u32);
        for len in [20usize, 64, 1052, 4124] {
            let solver = IdentSolver::new(len).unwrap();
            let (_, clean) = datagram(len, 0x5a, 0xbeef, true);
            for bit in 0..len * 8 {
                if bit / 8 == 4 {
                    continue; // FECN/BECN byte: not covered by the ICRC.
                }
                let mut payload = clean.clone();
                payload[bit / 8] ^= 1 << (bit % 8);
                tried += 1;
                missed += u32::from(recover(&solver, &payload).is_some());
            }
        }
        // 42 000 trials: 2^-16 predicts about 0.6 misses.
        assert!(tried > 42_000);
        assert!(missed <= 3, "{missed} undetected of {tried}");
    }

    /// xorshift64*: a fixed, dependency-free stream of corruptions.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() >> 32) as usize % n
        }
    }

    /// Damages a copy of `clean` in `payload`: one to four random bit flips or random
    /// byte values, anywhere but the BTH byte the ICRC does not cover (FECN/BECN).
    fn corrupt(rng: &mut Rng, clean: &[u8], payload: &mut [u8]) {
        payload.copy_from_slice(clean);
        let mut first = None;
        for _ in 0..1 + rng.below(4) {
            let at = loop {
                let at = rng.below(payload.len());
                if at != 4 {
                    break at;
                }
            };
            first.get_or_insert(at);
            let r = rng.next();
            payload[at] = if r & 1 == 0 {
                payload[at] ^ (1 << ((r >> 1) % 8))
            } else {
                (r >> 8) as u8
            };
        }
        // A corruption that undid itself (a byte set to its own value, a bit flipped
        // twice) is not damage: force one bit so every trial counts.
        if payload == clean {
            payload[first.unwrap_or(0)] ^= 0x80;
        }
    }

    /// False accepts per receive mode, measured: 10^6 damaged datagrams (half an
    /// ident-0 datagram as ferroce sends, half rxe's captured Send Only with IP ID
    /// 0xcd1e), each checked as the receiver would with the IP header unseen
    /// (identification 0 first, then the solver) and with it seen (the full ICRC). The
    /// bounds are those `docs/FINDINGS.md` states: 2^-16 unseen, 2^-32 seen.
    #[test]
    fn a_million_damaged_datagrams_slip_through_as_the_docs_state() {
        const TRIALS: u32 = 500_000;
        let (ident_zero_env, ident_zero) = datagram(64, 0x5a, 0, true);
        let rxe = captured_rxe_send();
        let rxe_env = Envelope {
            ip: IpFields::V4 {
                src: SRC,
                dst: DST,
                ident: 0xcd1e,
                flags_frag: IPV4_DONT_FRAG,
            },
            src_port: 54099,
            dst_port: 4791,
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut seen, mut ident_zero_only) = (0u32, 0u32);
        let mut unseen = [0u32; 2];
        for (kind, (envelope, clean)) in [(ident_zero_env, ident_zero), (rxe_env, rxe)]
            .into_iter()
            .enumerate()
        {
            let solver = IdentSolver::new(clean.len()).unwrap();
            let mut payload = clean.clone();
            for _ in 0..TRIALS {
                corrupt(&mut rng, &clean, &mut payload);
                let syndrome = Syndrome::of(SRC, DST, envelope.src_port, 4791, &payload).unwrap();
                ident_zero_only += u32::from(syndrome.is_zero());
                unseen[kind] +=
                    u32::from(syndrome.is_zero() || solver.solve(syndrome).unwrap().is_some());
                seen += u32::from(icrc::verify(&envelope, &payload).unwrap());
            }
        }
        std::eprintln!(
            "of {TRIALS} damaged ident-0 and {TRIALS} damaged rxe datagrams: {unseen:?} \
             accepted with the header unseen, {seen} with it seen, {ident_zero_only} by \
             identification 0 alone"
        );
        // 2^-16 of 500 000 is 7.6 (σ 2.8); 2^-32 of 10^6 is 0.0002.
        for (kind, count) in ["ident-0", "rxe"].iter().zip(unseen) {
            assert!(
                count <= 19,
                "{kind}: {count} false accepts, more than 2^-16 allows"
            );
        }
        assert_eq!(seen, 0);
        assert_eq!(ident_zero_only, 0);
    }
}
