//! Hostile packets: valid headers for any opcode, with field values picked to sit on
//! and around what the engine holds (its QPNs, PSNs, keys and addresses, of either
//! namespace) or anywhere at all, sealed with a correct ICRC so they reach the QPs.

use std::net::{IpAddr, Ipv4Addr};

use arbitrary::Arbitrary;
use ferroce_transport::engine::{Datagram, DatagramMeta, Ecn};
use ferroce_transport::wire::icrc::{self, Envelope, IpFields, IPV4_DONT_FRAG};
use ferroce_transport::wire::ident::Recovered;
use ferroce_transport::wire::packet::{self, Repr};
use ferroce_transport::wire::{aeth, atomic, bth, deth, ieth, imm, reth};
use ferroce_transport::wire::{AckSyndrome, OpCode, Psn, Qpn, Rkey};

use super::model::{sanitize, sanitize_u64};

/// The AckReq bit of [`Crafted::flags`].
pub const ACK_REQ: u8 = 1 << 4;

/// Largest payload generated: more than a 4096-byte MTU.
const MAX_PAYLOAD: usize = 4200;

/// A 24-bit value near one the engine expects, or any.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Near24 {
    /// The expected value plus a small signed step.
    Near(i8),
    /// Any value.
    Any(u32),
}

impl Near24 {
    fn pick(self, expected: u32) -> u32 {
        match self {
            Near24::Near(step) => expected.wrapping_add(step as i32 as u32) & 0x00ff_ffff,
            Near24::Any(value) => value & 0x00ff_ffff,
        }
    }
}

/// A key of a region the world holds (in either namespace), perturbed, or any.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum KeyPick {
    /// Region `index` of namespace `ns`, its key XOR `flip`.
    Region { ns: u8, index: u8, flip: u8 },
    /// Any key.
    Any(u32),
}

/// An address relative to a region the world holds, or any.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum AddrPick {
    /// Region `index` of namespace `ns`, `offset` bytes from its start.
    Region { ns: u8, index: u8, offset: i16 },
    /// Region `index` of namespace `ns`, `back` bytes before its end.
    End { ns: u8, index: u8, back: u8 },
    /// Any address.
    Any(u64),
}

/// A DMA length: the packet's own payload length (what a WRITE Only carries), small,
/// around an MTU, or any.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum LenPick {
    Payload,
    Small(u8),
    Medium(u16),
    Any(u32),
}

impl LenPick {
    pub fn value(self, payload_len: usize) -> u32 {
        match self {
            LenPick::Payload => payload_len as u32,
            LenPick::Small(n) => u32::from(n),
            LenPick::Medium(n) => u32::from(n),
            LenPick::Any(n) => n,
        }
    }
}

/// A destination QP: one of either namespace's, or any QPN.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum QpPick {
    Ours { ns: u8, index: u8 },
    Any(u32),
}

/// Who a datagram claims to come from.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum SourcePick {
    /// The peer every connected QP talks to.
    Peer,
    /// Another host.
    Stranger,
    /// The other namespace's address (as if looped back).
    OtherNamespace,
}

/// What the world tells the generator about the engine, for the fields that refer to it.
pub trait Lookup {
    /// A namespace's address.
    fn gid(&self, ns: usize) -> IpAddr;
    /// The peer address connected QPs use.
    fn peer(&self) -> IpAddr;
    /// Another address.
    fn stranger(&self) -> IpAddr;
    /// QP `index` of namespace `ns` (wrapping).
    fn qpn(&self, ns: usize, index: u8) -> Qpn;
    /// The PSN the peer sends next to that QP, and the last PSN the QP sent itself.
    fn psns(&self, ns: usize, qpn: Qpn) -> (Psn, Psn);
    /// A QP's path MTU in bytes (256 when it has none).
    fn path_mtu(&self, ns: usize, qpn: Qpn) -> u32;
    /// A QP's destination QPN and Q_Key.
    fn peer_qpn_and_qkey(&self, ns: usize, qpn: Qpn) -> (Qpn, u32);
    /// Key of region `index` of namespace `ns` (wrapping), if it has regions.
    fn key(&self, ns: usize, index: u8) -> Option<u32>;
    /// Address and length of region `index` of namespace `ns` (wrapping).
    fn region(&self, ns: usize, index: u8) -> Option<(u64, u64)>;
}

impl KeyPick {
    pub fn resolve(self, world: &impl Lookup) -> u32 {
        match self {
            KeyPick::Region { ns, index, flip } => {
                world.key(usize::from(ns % 2), index).unwrap_or(0) ^ u32::from(flip)
            }
            KeyPick::Any(key) => key,
        }
    }
}

impl AddrPick {
    pub fn resolve(self, world: &impl Lookup) -> u64 {
        match self {
            AddrPick::Region { ns, index, offset } => world
                .region(usize::from(ns % 2), index)
                .map_or(0, |(addr, _)| addr.wrapping_add(offset as i64 as u64)),
            AddrPick::End { ns, index, back } => world
                .region(usize::from(ns % 2), index)
                .map_or(0, |(addr, len)| {
                    addr.wrapping_add(len).wrapping_sub(u64::from(back))
                }),
            AddrPick::Any(addr) => addr,
        }
    }
}

/// One crafted packet.
#[derive(Debug, Clone, Arbitrary)]
pub struct Crafted {
    /// Index into every known opcode (an unknown one when past the end).
    pub opcode: u8,
    /// Which namespace's address it goes to.
    pub to_ns: u8,
    pub from: SourcePick,
    pub qp: QpPick,
    pub psn: Near24,
    /// `None`: the default P_Key.
    pub pkey: Option<u16>,
    /// SE, MigReq, FECN, BECN, AckReq (bits 0 to 4).
    pub flags: u8,
    pub key: KeyPick,
    pub addr: AddrPick,
    pub dma_len: LenPick,
    /// `None`: the destination QP's path MTU (what a FIRST or MIDDLE packet carries).
    pub payload_len: Option<u16>,
    pub fill: u8,
    pub swap_add: u64,
    pub compare: u64,
    pub syndrome: u8,
    pub msn: Near24,
    pub imm: u32,
    /// `None`: the QP's own Q_Key and source QP.
    pub deth: Option<(u32, u32)>,
    pub src_port: u16,
    /// Received through IPv4 ident recovery with this ident and DF flag.
    pub ident: Option<(u16, bool)>,
    /// Bytes overwritten after building, before sealing: (offset, value).
    pub mutations: Vec<(u16, u8)>,
    /// Leave the ICRC as building made it (false: reseal after the mutations).
    pub keep_icrc: bool,
}

/// An incoming datagram: where it claims to be from and its bytes.
#[derive(Debug)]
pub struct Incoming {
    pub meta: DatagramMeta,
    pub bytes: Vec<u8>,
}

/// The address a datagram from `from` to namespace `to_ns` claims.
pub fn source(from: SourcePick, to_ns: usize, world: &impl Lookup) -> IpAddr {
    match from {
        SourcePick::Peer => world.peer(),
        SourcePick::Stranger => world.stranger(),
        SourcePick::OtherNamespace => world.gid(1 - to_ns),
    }
}

/// The ICRC envelope of a datagram with this meta, as the engine computes it.
pub fn envelope_of(meta: &DatagramMeta) -> Option<Envelope> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (meta.src, meta.dst) else {
        return None;
    };
    let mut envelope = Envelope::ipv4(src, dst, 0, meta.src_port);
    if let (
        Some(found),
        IpFields::V4 {
            ident, flags_frag, ..
        },
    ) = (meta.ipv4_ident, &mut envelope.ip)
    {
        *ident = found.ident;
        *flags_frag = if found.dont_frag { IPV4_DONT_FRAG } else { 0 };
    }
    Some(envelope)
}

/// The meta of a datagram between these addresses.
pub fn meta(src: IpAddr, dst: IpAddr, src_port: u16, ident: Option<(u16, bool)>) -> DatagramMeta {
    DatagramMeta {
        src,
        dst,
        src_port,
        ecn: Ecn::NotEct,
        ipv4_ident: ident.map(|(ident, dont_frag)| Recovered { ident, dont_frag }),
    }
}

impl Crafted {
    /// A well-formed `opcode` packet from the peer to QP `qp` of namespace `ns` with the
    /// PSN it expects next, a valid key and address of that namespace's first region,
    /// a DMA length of `dma_len` and, if the opcode carries one, a one-MTU payload.
    pub fn to_qp(opcode: OpCode, ns: u8, qp: u8, dma_len: u32) -> Crafted {
        Crafted {
            opcode: OpCode::ALL.iter().position(|&o| o == opcode).unwrap_or(0) as u8,
            to_ns: ns,
            from: SourcePick::Peer,
            qp: QpPick::Ours { ns, index: qp },
            psn: Near24::Near(0),
            pkey: None,
            flags: ACK_REQ,
            key: KeyPick::Region {
                ns,
                index: 0,
                flip: 0,
            },
            addr: AddrPick::Region {
                ns,
                index: 0,
                offset: 0,
            },
            dma_len: LenPick::Any(dma_len),
            payload_len: None,
            fill: 0x11,
            swap_add: 1,
            compare: 0,
            syndrome: 0,
            msn: Near24::Near(0),
            imm: 0,
            deth: None,
            src_port: 0xc000,
            ident: None,
            mutations: Vec::new(),
            keep_icrc: false,
        }
    }

    /// The datagram, or `None` for an opcode that cannot be built.
    pub fn build(&self, world: &impl Lookup) -> Option<Incoming> {
        let to_ns = usize::from(self.to_ns % 2);
        let opcode = OpCode::ALL
            .get(usize::from(self.opcode))
            .copied()
            .unwrap_or(OpCode::Unknown(self.opcode));
        let info = opcode.info()?;
        let qpn = match self.qp {
            QpPick::Ours { ns, index } => world.qpn(usize::from(ns % 2), index),
            QpPick::Any(any) => Qpn::new(any & Qpn::MAX),
        };
        let (next_request, last_sent) = world.psns(to_ns, qpn);
        let expected = match info.operation {
            ferroce_transport::wire::opcode::Operation::Acknowledge
            | ferroce_transport::wire::opcode::Operation::ReadResponse
            | ferroce_transport::wire::opcode::Operation::AtomicAcknowledge => last_sent,
            _ => next_request,
        };
        let flag = |bit: u8| self.flags & (1 << bit) != 0;
        let mut repr = Repr::new(bth::Repr {
            opcode,
            solicited: flag(0),
            migreq: flag(1),
            pad_count: 0,
            pkey: self.pkey.unwrap_or(0xffff),
            fecn: flag(2),
            becn: flag(3),
            dest_qp: qpn,
            ack_req: flag(4),
            psn: Psn::new(self.psn.pick(expected.value())),
        });
        let payload_len = match (info.payload, self.payload_len) {
            (false, _) => 0,
            (true, None) => world.path_mtu(to_ns, qpn) as usize,
            (true, Some(len)) => usize::from(len) % (MAX_PAYLOAD + 1),
        };
        let headers = info.headers;
        let rkey = Rkey(self.key.resolve(world));
        let va = self.addr.resolve(world);
        if headers.deth {
            let (peer_qpn, qkey) = world.peer_qpn_and_qkey(to_ns, qpn);
            let (qkey, src_qp) = self.deth.unwrap_or((qkey, peer_qpn.value()));
            repr.deth = Some(deth::Repr {
                qkey,
                src_qp: Qpn::new(src_qp & Qpn::MAX),
            });
        }
        if headers.reth {
            repr.reth = Some(reth::Repr {
                virtual_address: va,
                rkey,
                dma_length: self.dma_len.value(payload_len),
            });
        }
        if headers.atomic_eth {
            repr.atomic_eth = Some(atomic::eth::Repr {
                virtual_address: va,
                rkey,
                swap_add: sanitize_u64(self.swap_add),
                compare: sanitize_u64(self.compare),
            });
        }
        if headers.aeth {
            repr.aeth = Some(aeth::Repr {
                syndrome: AckSyndrome::from_byte(self.syndrome)
                    .unwrap_or(AckSyndrome::Ack { credits: 0x1f }),
                msn: self.msn.pick(0),
            });
        }
        if headers.atomic_ack_eth {
            repr.atomic_ack_eth = Some(atomic::ack::Repr {
                original: sanitize_u64(self.swap_add),
            });
        }
        if headers.imm {
            repr.imm = Some(imm::Repr { imm: self.imm });
        }
        if headers.ieth {
            repr.ieth = Some(ieth::Repr { rkey });
        }
        let mut payload = vec![self.fill; payload_len];
        sanitize(&mut payload);
        let dst = world.gid(to_ns);
        let src = source(self.from, to_ns, world);
        let meta = meta(src, dst, self.src_port, self.ident);
        let envelope = envelope_of(&meta)?;
        let mut bytes = vec![0u8; packet::buffer_len(&repr, payload_len).ok()?];
        let len = packet::build(&repr, &payload, &envelope, &mut bytes).ok()?;
        bytes.truncate(len);
        if !self.mutations.is_empty() {
            for &(offset, value) in &self.mutations {
                let at = usize::from(offset) % bytes.len();
                bytes[at] = if value == 0xa5 { 0xa4 } else { value };
            }
            if !self.keep_icrc {
                icrc::fill(&envelope, &mut bytes).ok()?;
            }
        }
        Some(Incoming { meta, bytes })
    }
}

/// Raw bytes as a datagram to either namespace, optionally sealed with a correct ICRC.
#[derive(Debug, Clone, Arbitrary)]
pub struct Raw {
    to_ns: u8,
    from: SourcePick,
    src_port: u16,
    reseal: bool,
    bytes: Vec<u8>,
}

impl Raw {
    pub fn build(&self, world: &impl Lookup) -> Incoming {
        let to_ns = usize::from(self.to_ns % 2);
        let meta = meta(
            source(self.from, to_ns, world),
            world.gid(to_ns),
            self.src_port,
            None,
        );
        let mut bytes = self.bytes.clone();
        sanitize(&mut bytes);
        if self.reseal {
            if let Some(envelope) = envelope_of(&meta) {
                let _ = icrc::fill(&envelope, &mut bytes);
            }
        }
        Incoming { meta, bytes }
    }
}

/// The IPv4 address of a world's host `n`.
pub const fn host(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
}

/// The datagram the engine sent, checked as a receiver would: it parses and its ICRC
/// is right for its addresses.
pub fn check_outgoing(datagram: &Datagram) -> Result<packet::Parsed<'_>, String> {
    let parsed = packet::parse(&datagram.payload).map_err(|e| format!("does not parse: {e}"))?;
    let envelope = envelope_of(&datagram.meta).ok_or("not IPv4")?;
    if icrc::verify(&envelope, &datagram.payload) != Ok(true) {
        return Err("bad ICRC".into());
    }
    Ok(parsed)
}
