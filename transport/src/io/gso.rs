//! UDP segmentation offload (GSO) on send and receive offload (GRO) on receive.
//!
//! GSO hands the kernel one buffer of many equal-sized datagrams to the same peer and
//! one system call sends them all; GRO hands us many received datagrams of one flow in
//! one buffer. Both cut the per-packet cost of the kernel's UDP path several times over.
//!
//! The catch is the ICRC: it covers the IPv4 identification, and the kernel numbers the
//! segments of one GSO send 0, 1, 2, … (an unconnected socket with DF gives the first
//! one ID 0; segmentation, in software or in a NIC, counts up from there). The engine
//! computes every ICRC for ID 0, so segment `i`'s ICRC gets the affine correction for
//! ID `i` ([`IdentSolver::icrc_delta`]) — four bytes, no second pass over the payload.
//! IPv6 has no identification, so its ICRCs need no correction.

#![allow(unsafe_code)]

use std::mem;
use std::net::SocketAddr;
use std::ops::Range;

use ferroce_wire::ICRC_LEN;
use socket2::SockAddr;

use super::socket::CMSG_SPACE;
use super::solvers::Solvers;
use crate::engine::LentDatagram;

/// Most segments the kernel takes in one GSO send (`UDP_MAX_SEGMENTS`).
pub(super) const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (an IPv4 datagram's limit, less headers).
pub(super) const MAX_GSO_BYTES: usize = 65_000;
/// `UDP_SEGMENT` and `UDP_GRO` socket options / control messages (linux/udp.h).
pub(super) const UDP_SEGMENT: libc::c_int = 103;
pub(super) const UDP_GRO: libc::c_int = 104;

/// Splits `datagrams` into runs that one GSO send can carry: same destination, the same
/// length for all but the last (which may be shorter, not empty), at most
/// [`MAX_SEGMENTS`] segments and [`MAX_GSO_BYTES`] bytes.
pub(super) fn runs(datagrams: &[LentDatagram<'_>]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    while start < datagrams.len() {
        let first = &datagrams[start];
        let size = first.len();
        let mut end = start + 1;
        let mut bytes = size;
        while end < datagrams.len() && end - start < MAX_SEGMENTS {
            let d = &datagrams[end];
            let len = d.len();
            if d.meta().dst != first.meta().dst
                || len == 0
                || len > size
                || bytes + len > MAX_GSO_BYTES
            {
                break;
            }
            bytes += len;
            end += 1;
            if len < size {
                break; // A shorter segment ends a GSO run.
            }
        }
        runs.push(start..end);
        start = end;
    }
    runs
}

/// Corrections of ICRCs for GSO segment numbers.
#[derive(Debug, Default)]
pub(super) struct IcrcFixer {
    solvers: Solvers,
}

impl IcrcFixer {
    /// What to XOR into the ICRC of a datagram computed for IPv4 ID 0 so that it is right
    /// as segment `index` of a GSO send (zero for the first segment, and for IPv6).
    pub(super) fn icrc_delta(&mut self, datagram: &LentDatagram<'_>, index: usize) -> u32 {
        if index == 0 || !datagram.meta().dst.is_ipv4() {
            return 0;
        }
        // Not a RoCE-sized datagram: nothing to correct.
        self.solvers
            .get(datagram.len())
            .map_or(0, |s| s.icrc_delta(index as u16))
    }
}

/// XORs `delta` into the ICRC, the last four bytes of `payload`.
fn fix_icrc(payload: &mut [u8], delta: u32) {
    if let Some(icrc) = payload.last_chunk_mut::<ICRC_LEN>() {
        *icrc = (u32::from_le_bytes(*icrc) ^ delta).to_le_bytes();
    }
}

/// Pieces of at most this many bytes that meet between lent ones are copied together
/// into one iovec: the kernel pays per iovec, and these are a few bytes each.
const SEAM_MAX: usize = 64;

/// The iovecs of `run`'s bytes in order, and the buffer some of them point into. A
/// datagram with lent bytes has three pieces (headers, the lent bytes, then pad and
/// ICRC); consecutive short pieces a datagram holds, such as one datagram's ICRC and the
/// next one's headers in a run of lent payloads, are copied into one seam. Lent bytes
/// are only pointed at (the kernel reads them; nothing here does). The segments are the
/// same: GSO cuts the joined bytes, wherever the iovecs end.
fn gather(run: &[LentDatagram<'_>]) -> (Vec<libc::iovec>, Vec<u8>) {
    /// A piece of a datagram: bytes it holds, or lent ones.
    enum Piece<'a> {
        Held(&'a [u8]),
        Lent(*const u8, usize),
    }
    let mut pieces = Vec::with_capacity(run.len() * 3);
    for d in run {
        match d.lent() {
            Some(lent) => {
                let (head, tail) = d.held().split_at(lent.at().min(d.held().len()));
                pieces.push(Piece::Held(head));
                pieces.push(Piece::Lent(lent.as_ptr(), lent.len()));
                pieces.push(Piece::Held(tail));
            }
            None => pieces.push(Piece::Held(d.held())),
        }
    }
    // First the seams' bytes (so the buffer is done moving), then the iovecs.
    let short = |piece: &Piece<'_>| matches!(piece, Piece::Held(b) if b.len() <= SEAM_MAX);
    let seams_len = pieces
        .iter()
        .filter(|p| short(p))
        .map(|p| match p {
            Piece::Held(b) => b.len(),
            Piece::Lent(..) => 0,
        })
        .sum();
    let mut seams = Vec::with_capacity(seams_len);
    /// One iovec to be: bytes of the seams, or a piece pointed at where it is.
    enum Span {
        Seam(Range<usize>),
        InPlace(*const u8, usize),
    }
    let mut spans = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let (base, len) = match piece {
            Piece::Held(bytes) if bytes.len() <= SEAM_MAX => {
                if bytes.is_empty() {
                    continue;
                }
                let start = seams.len();
                seams.extend_from_slice(bytes);
                match spans.last_mut() {
                    Some(Span::Seam(seam)) => seam.end = seams.len(),
                    _ => spans.push(Span::Seam(start..seams.len())),
                }
                continue;
            }
            Piece::Held(bytes) => (bytes.as_ptr(), bytes.len()),
            Piece::Lent(base, len) => (base, len),
        };
        if len > 0 {
            spans.push(Span::InPlace(base, len));
        }
    }
    let iovecs = spans
        .into_iter()
        .map(|span| {
            let (base, len) = match span {
                Span::Seam(seam) => (seams[seam.start..].as_ptr(), seam.len()),
                Span::InPlace(base, len) => (base, len),
            };
            libc::iovec {
                iov_base: base as *mut _,
                iov_len: len,
            }
        })
        .collect();
    (iovecs, seams)
}

/// One `sendmsg`: a run of datagrams to one peer (one GSO send when it has several),
/// with everything its `msghdr` points at. Boxed, because the header points into it;
/// the payloads stay in their `Vec`s, which do not move, or where they are lent from
/// for the round `'r` (see [`gather`] for the iovecs).
pub(super) struct OutMessage<'r> {
    datagrams: Vec<LentDatagram<'r>>,
    /// The correction XORed into each datagram's ICRC for its place in the run.
    deltas: Vec<u32>,
    name: SockAddr,
    iovecs: Vec<libc::iovec>,
    /// Copies of the short pieces between lent bytes, which `iovecs` point into (kept,
    /// never read).
    #[allow(dead_code)]
    seams: Vec<u8>,
    control: [u8; CMSG_SPACE],
    header: libc::msghdr,
}

// SAFETY: the raw pointers in `iovecs` and `header` point only into this message's own
// fields and payloads, which move with it, and at lent bytes, which stay valid (and are
// `Send`) for the round `'r` the message cannot outlive.
unsafe impl Send for OutMessage<'_> {}

impl<'r> OutMessage<'r> {
    /// A message for `run`, which [`runs`] made (or a single datagram). Each ICRC is
    /// corrected in place for the datagram's segment number.
    pub(super) fn new(
        mut run: Vec<LentDatagram<'r>>,
        fixer: &mut IcrcFixer,
    ) -> Box<OutMessage<'r>> {
        let dst = run
            .first()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |d| {
                SocketAddr::new(d.meta().dst, ferroce_wire::ROCEV2_UDP_PORT)
            });
        let deltas = run
            .iter_mut()
            .enumerate()
            .map(|(i, d)| {
                let delta = fixer.icrc_delta(d, i);
                fix_icrc(d.held_mut(), delta);
                delta
            })
            .collect();
        let (iovecs, seams) = gather(&run);
        let mut message = Box::new(OutMessage {
            datagrams: run,
            deltas,
            name: SockAddr::from(dst),
            iovecs,
            seams,
            control: [0; CMSG_SPACE],
            // SAFETY: msghdr is plain data; zero is a valid value.
            header: unsafe { mem::zeroed() },
        });
        let m = &mut *message;
        m.header.msg_name = m.name.as_ptr() as *mut _;
        m.header.msg_namelen = m.name.len();
        m.header.msg_iov = m.iovecs.as_mut_ptr();
        m.header.msg_iovlen = m.iovecs.len();
        if m.datagrams.len() > 1 {
            let size = m.datagrams[0].len() as u16;
            m.header.msg_control = m.control.as_mut_ptr().cast();
            m.header.msg_controllen = CMSG_SPACE;
            // SAFETY: the control buffer has room for one u16 message, so CMSG_FIRSTHDR
            // is non-null; it is written within its bounds.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&m.header);
                (*cmsg).cmsg_level = libc::IPPROTO_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
                m.header.msg_controllen = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as _;
            }
        }
        message
    }

    /// The header to hand to `sendmsg`; valid while `self` lives.
    pub(super) fn header(&self) -> &libc::msghdr {
        &self.header
    }

    /// Number of datagrams.
    pub(super) fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Gives the datagrams back as they came (when the kernel did not take them: they
    /// may go out later in another place of another run).
    pub(super) fn into_datagrams(self: Box<Self>) -> Vec<LentDatagram<'r>> {
        let OutMessage {
            mut datagrams,
            deltas,
            ..
        } = *self;
        for (d, delta) in datagrams.iter_mut().zip(deltas) {
            fix_icrc(d.held_mut(), delta);
        }
        datagrams
    }

    /// The payload buffers, once the kernel has copied them (for reuse).
    pub(super) fn into_payloads(self: Box<Self>) -> impl Iterator<Item = Vec<u8>> + 'r {
        self.datagrams.into_iter().map(LentDatagram::into_buffer)
    }
}

/// Payloads of sent datagrams kept for reclaiming at most: a driver whose owner never
/// reclaims (a bare driver in a test or a benchmark) must not grow without end.
const MAX_SPENT: usize = 1024;

/// Payloads of datagrams the kernel has taken, until the engine reclaims them.
#[derive(Debug, Default)]
pub(super) struct Spent(Vec<Vec<u8>>);

impl Spent {
    /// Keeps `payloads`, up to [`MAX_SPENT`]; the rest are freed.
    pub(super) fn keep(&mut self, payloads: impl Iterator<Item = Vec<u8>>) {
        let room = MAX_SPENT.saturating_sub(self.0.len());
        self.0.extend(payloads.take(room));
    }

    /// Hands every kept payload to `each`.
    pub(super) fn reclaim(&mut self, each: impl FnMut(Vec<u8>)) {
        self.0.drain(..).for_each(each);
    }
}

/// Cuts `datagrams` (drained) into messages: GSO runs when `gso`, else one each.
/// Boxed on purpose: each header points into its own message, which must not move.
#[allow(clippy::vec_box)]
pub(super) fn messages<'r>(
    datagrams: &mut Vec<LentDatagram<'r>>,
    gso: bool,
    fixer: &mut IcrcFixer,
) -> Vec<Box<OutMessage<'r>>> {
    let ranges = if gso {
        runs(datagrams)
    } else {
        (0..datagrams.len()).map(|i| i..i + 1).collect()
    };
    let mut drained = datagrams.drain(..);
    ranges
        .into_iter()
        .map(|r| OutMessage::new(drained.by_ref().take(r.len()).collect(), fixer))
        .collect()
}

/// The datagrams a GRO buffer holds: `gro_size` bytes each, the last maybe shorter.
pub(super) fn split_gro(buffer: &[u8], gro_size: Option<usize>) -> impl Iterator<Item = &[u8]> {
    let size = gro_size.filter(|&s| s > 0).unwrap_or(buffer.len().max(1));
    buffer.chunks(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::memory::MemoryTable;
    use crate::engine::{AccessFlags, Datagram, DatagramMeta, Ecn, ProtectionDomain};

    fn owned(dst: &str, len: usize) -> Datagram {
        let meta = DatagramMeta {
            src: "10.0.0.1".parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 4791,
            ecn: Ecn::NotEct,
            ipv4_ident: None,
        };
        Datagram {
            meta,
            payload: vec![0; len],
        }
    }

    fn datagram(dst: &str, len: usize) -> LentDatagram<'static> {
        LentDatagram::from(owned(dst, len))
    }

    #[test]
    fn runs_follow_gso_rules() {
        let d = |dst, len| datagram(dst, len);
        let batch = vec![
            d("10.0.0.2", 1052),
            d("10.0.0.2", 1052),
            d("10.0.0.2", 300), // shorter ends run
            d("10.0.0.2", 1052),
            d("10.0.0.3", 1052), // new destination
            d("10.0.0.3", 2000), // longer cannot follow
        ];
        assert_eq!(runs(&batch), vec![0..3, 3..4, 4..5, 5..6]);
        let many: Vec<LentDatagram<'_>> = (0..150).map(|_| d("10.0.0.2", 300)).collect();
        assert_eq!(runs(&many), vec![0..64, 64..128, 128..150]);
        let big: Vec<LentDatagram<'_>> = (0..20).map(|_| d("10.0.0.2", 4124)).collect();
        assert_eq!(runs(&big), vec![0..15, 15..20]);
    }

    /// Joined bytes of the iovecs.
    fn joined(iovecs: &[libc::iovec]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in iovecs {
            // SAFETY: built by `gather` over live payloads and a live `body`.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        out
    }

    #[test]
    fn lent_payloads_are_gathered_with_one_iovec_per_seam() {
        let body: Vec<u8> = (0..3 * 1024).map(|i| (i % 251) as u8).collect();
        let pd = ProtectionDomain(1);
        let mut table = MemoryTable::default();
        let mr = table
            .register(pd, 3 * 1024, AccessFlags::NONE, 1, 0)
            .unwrap();
        table.owner_write(mr.lkey, mr.addr, &body).unwrap();
        let mut expect = Vec::new();
        let run: Vec<LentDatagram<'_>> = (0..3)
            .map(|i| {
                let mut d = owned("10.0.0.2", 16);
                d.payload[..12].fill(i as u8);
                d.payload[12..].fill(0xe0 + i as u8);
                expect.extend_from_slice(&d.payload[..12]);
                expect.extend_from_slice(&body[i * 1024..(i + 1) * 1024]);
                expect.extend_from_slice(&d.payload[12..]);
                let offset = i as u64 * 1024;
                LentDatagram::lent_from(d, 12, &table, &mr, (offset, 1024))
            })
            .collect();
        let (iovecs, _seams) = gather(&run);
        // Headers, then each lent payload followed by one seam (ICRC and next headers,
        // or the last ICRC).
        let lens: Vec<usize> = iovecs.iter().map(|v| v.iov_len).collect();
        assert_eq!(lens, [12, 1024, 16, 1024, 16, 1024, 4]);
        assert_eq!(joined(&iovecs), expect);
        // Owned payloads past the seam size point at themselves.
        let owned = vec![datagram("10.0.0.2", 1000), datagram("10.0.0.2", 1000)];
        let (iovecs, seams) = gather(&owned);
        assert_eq!(iovecs.len(), 2);
        assert!(seams.is_empty());
        assert_eq!(iovecs[1].iov_base as *const u8, owned[1].held().as_ptr());
    }

    #[test]
    fn gro_split() {
        let buf = [1u8; 10];
        assert_eq!(
            split_gro(&buf, Some(4))
                .map(<[u8]>::len)
                .collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert_eq!(split_gro(&buf, None).count(), 1);
        assert_eq!(split_gro(&[], None).count(), 0);
    }
}
