//! How each field type of the control messages is encoded (the tables are in
//! [`codec`](super::codec)): every type is a [`Field`], put by a [`Writer`] as
//! little-endian fixed-size values and got by a [`Reader`] that refuses every value
//! the writer would not produce, so what decodes encodes back to the same bytes.
//! Structures are their fields in declaration order ([`record!`]), so adding a field to
//! one fails to compile until the encoding says where it goes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferroce_wire::{Psn, Qpn, Rkey};

use super::codec::{DecodeError, EncodeError};
use super::command::PortStatus;
use super::reasons;
use crate::engine::{
    AccessFlags, AddressVector, CompletionQueueId, Counters, DeviceAttributes, DeviceLimits,
    DropCounters, Lkey, MemoryRegion, NakCounters, PathMtu, ProtectionDomain, QpAttr, QpCap,
    QpInfo, QpInitAttr, QpState, QpType, QuotaResource, RecvWr, SgList, Sge, SharedReceiveQueueId,
    SrqAttr, VerbsError,
};
use crate::io::ThreadCounters;

/// Bytes of an encoded address: a family byte (0 none, 4, 6) and 16 address bytes
/// (IPv4: 4, then 12 zero bytes).
pub(super) const IP_LEN: usize = 17;
/// Bytes of an encoded [`Sge`].
const SGE_LEN: usize = 16;

/// A value with a fixed encoding.
pub(super) trait Field: Sized {
    /// Appends the value.
    fn put(&self, w: &mut Writer<'_>);
    /// Takes a value off the reader, refusing bytes `put` would not write.
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// Appends fields to a message being built.
#[derive(Debug)]
pub(super) struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub(super) fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { out }
    }

    pub(super) fn put<T: Field>(&mut self, value: &T) {
        value.put(self);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// A `u32` length and the bytes.
    pub(super) fn data(&mut self, data: &[u8]) {
        self.put(&(data.len() as u32));
        self.bytes(data);
    }

    /// A verbs error; its reason must be one [`reasons`] knows (the reader refuses
    /// others), which is why this one can fail.
    pub(super) fn verbs_error(&mut self, error: &VerbsError) -> Result<(), EncodeError> {
        use VerbsError::*;
        let (code, reason) = match *error {
            InvalidArgument(reason) => (error_code::INVALID_ARGUMENT, reason),
            LimitExceeded(reason) => (error_code::LIMIT_EXCEEDED, reason),
            NotFound(reason) => (error_code::NOT_FOUND, reason),
            AlreadyExists(reason) => (error_code::ALREADY_EXISTS, reason),
            Busy(reason) => (error_code::BUSY, reason),
            MissingAttribute(reason) => (error_code::MISSING_ATTRIBUTE, reason),
            AttributeNotAllowed(reason) => (error_code::ATTRIBUTE_NOT_ALLOWED, reason),
            AccessDenied(reason) => (error_code::ACCESS_DENIED, reason),
            QuotaExceeded { resource, limit } => {
                self.put(&error_code::QUOTA_EXCEEDED);
                self.put(&resource);
                self.put(&limit);
                return Ok(());
            }
            InvalidStateTransition { qp_type, from, to } => {
                self.put(&error_code::INVALID_STATE_TRANSITION);
                self.put(&qp_type);
                self.put(&from);
                self.put(&to);
                return Ok(());
            }
            InvalidState(state) => {
                self.put(&error_code::INVALID_STATE);
                self.put(&state);
                return Ok(());
            }
            QueueFull => {
                self.put(&error_code::QUEUE_FULL);
                return Ok(());
            }
        };
        let known = reasons::known(reason).ok_or(EncodeError::UnknownReason(reason))?;
        self.put(&code);
        // Every known reason is shorter than 256 bytes (a test checks the table).
        self.put(&(known.len() as u8));
        self.bytes(known.as_bytes());
        Ok(())
    }
}

/// Takes fields off a message body, checking each.
#[derive(Debug)]
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn bad(field: &'static str, value: impl Into<u64>) -> DecodeError {
    DecodeError::BadValue {
        field,
        value: value.into(),
    }
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    pub(super) fn get<T: Field>(&mut self) -> Result<T, DecodeError> {
        T::get(self)
    }

    /// Every byte was read.
    pub(super) fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes(extra)),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let available = self.bytes.len() - self.at;
        if n > available {
            return Err(DecodeError::Truncated {
                needed: self.at.saturating_add(n),
                available: self.bytes.len(),
            });
        }
        let taken = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A `u32` count of elements of `len` bytes each, all of which must follow (so a
    /// count cannot make the reader allocate more than the message holds).
    pub(super) fn count(&mut self, len: usize) -> Result<usize, DecodeError> {
        let count = self.get::<u32>()? as usize;
        let needed = count.saturating_mul(len);
        if needed > self.bytes.len() - self.at {
            return Err(DecodeError::Truncated {
                needed: self.at.saturating_add(needed),
                available: self.bytes.len(),
            });
        }
        Ok(count)
    }

    /// A `u32` length at most `limit`, and that many bytes.
    pub(super) fn data(&mut self, limit: usize) -> Result<Vec<u8>, DecodeError> {
        let length = self.get::<u32>()?;
        if length as usize > limit {
            return Err(DecodeError::OverLimit {
                field: "data length",
                value: length.into(),
                limit: limit as u64,
            });
        }
        Ok(self.take(length as usize)?.to_vec())
    }

    pub(super) fn verbs_error(&mut self) -> Result<VerbsError, DecodeError> {
        use VerbsError::*;
        let code: u8 = self.get()?;
        Ok(match code {
            error_code::INVALID_ARGUMENT => InvalidArgument(self.reason()?),
            error_code::LIMIT_EXCEEDED => LimitExceeded(self.reason()?),
            error_code::QUOTA_EXCEEDED => QuotaExceeded {
                resource: self.get()?,
                limit: self.get()?,
            },
            error_code::NOT_FOUND => NotFound(self.reason()?),
            error_code::ALREADY_EXISTS => AlreadyExists(self.reason()?),
            error_code::BUSY => Busy(self.reason()?),
            error_code::INVALID_STATE_TRANSITION => InvalidStateTransition {
                qp_type: self.get()?,
                from: self.get()?,
                to: self.get()?,
            },
            error_code::MISSING_ATTRIBUTE => MissingAttribute(self.reason()?),
            error_code::ATTRIBUTE_NOT_ALLOWED => AttributeNotAllowed(self.reason()?),
            error_code::INVALID_STATE => InvalidState(self.get()?),
            error_code::ACCESS_DENIED => AccessDenied(self.reason()?),
            error_code::QUEUE_FULL => QueueFull,
            other => return Err(bad("error code", other)),
        })
    }

    fn reason(&mut self) -> Result<&'static str, DecodeError> {
        let length: u8 = self.get()?;
        let text = self.take(length.into())?;
        std::str::from_utf8(text)
            .ok()
            .and_then(reasons::known)
            .ok_or(DecodeError::UnknownReason)
    }
}

macro_rules! integer {
    ($($ty:ty),*) => {$(
        impl Field for $ty {
            fn put(&self, w: &mut Writer<'_>) {
                w.bytes(&self.to_le_bytes());
            }

            fn get(r: &mut Reader<'_>) -> Result<$ty, DecodeError> {
                r.array().map(<$ty>::from_le_bytes)
            }
        }
    )*};
}

integer!(u8, u16, u32, u64);

impl Field for bool {
    fn put(&self, w: &mut Writer<'_>) {
        w.put(&u8::from(*self));
    }

    fn get(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
        match r.get::<u8>()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(bad("bool", other)),
        }
    }
}

/// Counts and sizes the engine keeps as `usize`: a `u64`.
impl Field for usize {
    fn put(&self, w: &mut Writer<'_>) {
        w.put(&(*self as u64));
    }

    fn get(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
        let value: u64 = r.get()?;
        usize::try_from(value).map_err(|_| bad("count", value))
    }
}

/// `u32` newtypes with every value valid.
macro_rules! id {
    ($($ty:ident),*) => {$(
        impl Field for $ty {
            fn put(&self, w: &mut Writer<'_>) {
                w.put(&self.0);
            }

            fn get(r: &mut Reader<'_>) -> Result<$ty, DecodeError> {
                r.get().map($ty)
            }
        }
    )*};
}

id!(
    ProtectionDomain,
    Lkey,
    Rkey,
    CompletionQueueId,
    SharedReceiveQueueId
);

/// 24-bit numbers: a `u32` below 2^24.
macro_rules! twenty_four_bits {
    ($($ty:ident: $name:literal),*) => {$(
        impl Field for $ty {
            fn put(&self, w: &mut Writer<'_>) {
                w.put(&self.value());
            }

            fn get(r: &mut Reader<'_>) -> Result<$ty, DecodeError> {
                let value: u32 = r.get()?;
                if value >= 1 << 24 {
                    return Err(bad($name, value));
                }
                Ok($ty::new(value))
            }
        }
    )*};
}

twenty_four_bits!(Qpn: "qpn", Psn: "psn");

/// A `u32` of ibverbs access bits; unknown bits are refused.
impl Field for AccessFlags {
    fn put(&self, w: &mut Writer<'_>) {
        w.put(&self.bits());
    }

    fn get(r: &mut Reader<'_>) -> Result<AccessFlags, DecodeError> {
        let bits: u32 = r.get()?;
        AccessFlags::from_bits(bits).ok_or(bad("access", bits))
    }
}

/// Enums as one byte of their ibverbs code.
macro_rules! code {
    ($($ty:ident: $name:literal),*) => {$(
        impl Field for $ty {
            fn put(&self, w: &mut Writer<'_>) {
                w.put(&self.ibv_code());
            }

            fn get(r: &mut Reader<'_>) -> Result<$ty, DecodeError> {
                let code: u8 = r.get()?;
                $ty::from_ibv_code(code).ok_or(bad($name, code))
            }
        }
    )*};
}

code!(QpType: "qp_type", QpState: "qp_state", PathMtu: "path_mtu");

/// 0 QPs, 1 CQs, 2 SRQs, 3 MRs, 4 registered bytes, 5 work requests.
impl Field for QuotaResource {
    fn put(&self, w: &mut Writer<'_>) {
        let code: u8 = match self {
            QuotaResource::Qps => 0,
            QuotaResource::Cqs => 1,
            QuotaResource::Srqs => 2,
            QuotaResource::Mrs => 3,
            QuotaResource::RegisteredBytes => 4,
            QuotaResource::WorkRequests => 5,
        };
        w.put(&code);
    }

    fn get(r: &mut Reader<'_>) -> Result<QuotaResource, DecodeError> {
        use QuotaResource::*;
        match r.get::<u8>()? {
            0 => Ok(Qps),
            1 => Ok(Cqs),
            2 => Ok(Srqs),
            3 => Ok(Mrs),
            4 => Ok(RegisteredBytes),
            5 => Ok(WorkRequests),
            other => Err(bad("quota resource", other)),
        }
    }
}

/// An address or none ([`IP_LEN`] bytes).
impl Field for Option<IpAddr> {
    fn put(&self, w: &mut Writer<'_>) {
        let mut address = [0u8; 16];
        let family: u8 = match self {
            None => 0,
            Some(IpAddr::V4(v4)) => {
                address[..4].copy_from_slice(&v4.octets());
                4
            }
            Some(IpAddr::V6(v6)) => {
                address = v6.octets();
                6
            }
        };
        w.put(&family);
        w.bytes(&address);
    }

    fn get(r: &mut Reader<'_>) -> Result<Option<IpAddr>, DecodeError> {
        let family: u8 = r.get()?;
        let address: [u8; 16] = r.array()?;
        let [a, b, c, d, rest @ ..] = address;
        match family {
            0 if address == [0; 16] => Ok(None),
            4 if rest == [0; 12] => Ok(Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))),
            6 => Ok(Some(IpAddr::V6(Ipv6Addr::from(address)))),
            0 | 4 => Err(bad("address padding", 0u8)),
            _ => Err(bad("address family", family)),
        }
    }
}

/// An address that must be there (family 4 or 6).
impl Field for IpAddr {
    fn put(&self, w: &mut Writer<'_>) {
        w.put(&Some(*self));
    }

    fn get(r: &mut Reader<'_>) -> Result<IpAddr, DecodeError> {
        r.get::<Option<IpAddr>>()?.ok_or(bad("address family", 0u8))
    }
}

/// An SRQ or none: a bool and the id (0 for none).
impl Field for Option<SharedReceiveQueueId> {
    fn put(&self, w: &mut Writer<'_>) {
        w.put(&self.is_some());
        w.put(&self.map_or(0, |srq| srq.0));
    }

    fn get(r: &mut Reader<'_>) -> Result<Option<SharedReceiveQueueId>, DecodeError> {
        match (r.get::<bool>()?, r.get::<u32>()?) {
            (true, id) => Ok(Some(SharedReceiveQueueId(id))),
            (false, 0) => Ok(None),
            (false, id) => Err(bad("absent srq", id)),
        }
    }
}

/// `wr_id`, a `u32` count of SGEs, the SGEs.
impl Field for RecvWr {
    fn put(&self, w: &mut Writer<'_>) {
        w.put(&self.wr_id);
        w.put(&(self.sg_list.len() as u32));
        for sge in &self.sg_list {
            w.put(sge);
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<RecvWr, DecodeError> {
        let wr_id = r.get()?;
        let count = r.count(SGE_LEN)?;
        let sg_list = (0..count).map(|_| r.get()).collect::<Result<SgList, _>>()?;
        Ok(RecvWr { wr_id, sg_list })
    }
}

/// A structure as its fields in declaration order. The destructuring and the literal
/// name every field, so a field added to the structure fails to compile here.
macro_rules! record {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {$(
        impl Field for $ty {
            fn put(&self, w: &mut Writer<'_>) {
                let $ty { $($field),* } = self;
                $(w.put($field);)*
            }

            fn get(r: &mut Reader<'_>) -> Result<$ty, DecodeError> {
                Ok($ty { $($field: r.get()?),* })
            }
        }
    )*};
}

record! {
    QpCap { max_send_wr, max_recv_wr, max_send_sge, max_recv_sge, max_inline_data }
    QpInitAttr { qp_type, pd, send_cq, recv_cq, srq, cap, sq_sig_all }
    QpInfo {
        qpn,
        qp_type,
        state,
        attr,
        cap,
        send_outstanding,
        recv_outstanding,
        responses_queued,
    }
    SrqAttr { max_wr, max_sge, srq_limit }
    Sge { addr, length, lkey }
    MemoryRegion { pd, lkey, rkey, addr, length, access }
    DeviceLimits {
        max_qp,
        max_qp_wr,
        max_sge,
        max_cq,
        max_cqe,
        max_mr,
        max_mr_size,
        max_pd,
        max_srq,
        max_srq_wr,
        max_srq_sge,
        max_inline_data,
        max_qp_rd_atom,
        max_qp_init_rd_atom,
        max_async_events,
    }
    DeviceAttributes { limits, active_mtu }
    PortStatus { active, active_mtu, gid_tbl_len }
    NakCounters {
        psn_sequence,
        rnr,
        invalid_request,
        remote_access,
        remote_operational,
        other,
    }
    DropCounters {
        malformed,
        unknown_address,
        unknown_qp,
        wrong_transport,
        wrong_state,
        address_mismatch,
        qkey_mismatch,
        pkey_mismatch,
        no_receive_buffer,
        out_of_sequence,
        unexpected_response,
        duplicate_response,
        duplicate_not_replayed,
        refused,
        too_long,
    }
    Counters {
        packets_in,
        packets_out,
        bytes_in,
        bytes_out,
        retransmits,
        timeouts,
        duplicates,
        icrc_errors,
        cnps_received,
        ecn_ce_received,
        completion_queue_overflows,
        async_events_dropped,
        naks_sent,
        naks_received,
        drops,
    }
    ThreadCounters {
        rounds,
        sleeps,
        ident_zero,
        ident_unrecovered,
        ident_nonzero,
        ident_over_budget,
        ident_solvers_built,
        ip_header_seen,
        ip_header_missing,
        ip_raw_unmatched,
        truncated,
        unroutable,
        io_errors,
        refused_posts,
        lost_post_errors,
    }
}

/// A mask of the attributes set (`attr_bit`), then every attribute, an unset one as
/// zero bytes.
impl Field for QpAttr {
    fn put(&self, w: &mut Writer<'_>) {
        let QpAttr {
            state,
            pkey_index,
            port_num,
            qkey,
            access,
            path_mtu,
            dest_qpn,
            rq_psn,
            sq_psn,
            max_rd_atomic,
            max_dest_rd_atomic,
            min_rnr_timer,
            timeout,
            retry_cnt,
            rnr_retry,
            av,
            flow_label,
        } = *self;
        let mut mask = 0;
        let mut set = |bit: u32, present: bool| {
            if present {
                mask |= bit;
            }
        };
        set(attr_bit::STATE, state.is_some());
        set(attr_bit::PKEY_INDEX, pkey_index.is_some());
        set(attr_bit::PORT_NUM, port_num.is_some());
        set(attr_bit::QKEY, qkey.is_some());
        set(attr_bit::ACCESS, access.is_some());
        set(attr_bit::PATH_MTU, path_mtu.is_some());
        set(attr_bit::DEST_QPN, dest_qpn.is_some());
        set(attr_bit::RQ_PSN, rq_psn.is_some());
        set(attr_bit::SQ_PSN, sq_psn.is_some());
        set(attr_bit::MAX_RD_ATOMIC, max_rd_atomic.is_some());
        set(attr_bit::MAX_DEST_RD_ATOMIC, max_dest_rd_atomic.is_some());
        set(attr_bit::MIN_RNR_TIMER, min_rnr_timer.is_some());
        set(attr_bit::TIMEOUT, timeout.is_some());
        set(attr_bit::RETRY_CNT, retry_cnt.is_some());
        set(attr_bit::RNR_RETRY, rnr_retry.is_some());
        set(attr_bit::AV, av.is_some());
        set(attr_bit::FLOW_LABEL, flow_label.is_some());
        w.put(&mask);
        w.put(&qkey.unwrap_or(0));
        w.put(&access.map_or(0, AccessFlags::bits));
        w.put(&dest_qpn.map_or(0, Qpn::value));
        w.put(&rq_psn.map_or(0, Psn::value));
        w.put(&sq_psn.map_or(0, Psn::value));
        w.put(&flow_label.unwrap_or(0));
        w.put(&pkey_index.unwrap_or(0));
        w.put(&state.map_or(0, QpState::ibv_code));
        w.put(&port_num.unwrap_or(0));
        w.put(&path_mtu.map_or(0, PathMtu::ibv_code));
        for value in [
            max_rd_atomic,
            max_dest_rd_atomic,
            min_rnr_timer,
            timeout,
            retry_cnt,
            rnr_retry,
        ] {
            w.put(&value.unwrap_or(0));
        }
        w.put(&av.map(|av| av.remote));
        w.put(&av.and_then(|av| av.local));
    }

    fn get(r: &mut Reader<'_>) -> Result<QpAttr, DecodeError> {
        use attr_bit::*;
        let mask: u32 = r.get()?;
        if mask & !ALL != 0 {
            return Err(bad("attribute mask", mask));
        }
        // An attribute is there when its mask bit is set; else its bytes must be zero.
        // Its value is checked on its own bytes, so zero bytes that are no valid value
        // (no MTU is 0) are still an unset attribute.
        fn present<T: Field>(
            r: &mut Reader<'_>,
            mask: u32,
            bit: u32,
        ) -> Result<Option<T>, DecodeError> {
            let start = r.at;
            if mask & bit != 0 {
                return r.get().map(Some);
            }
            // Skip the bytes (their value does not matter yet) and check they are zero.
            match T::get(r) {
                Ok(_) | Err(DecodeError::BadValue { .. }) => {}
                Err(error) => return Err(error),
            }
            match r.bytes[start..r.at].iter().all(|&b| b == 0) {
                true => Ok(None),
                false => Err(bad("unset attribute", u64::from(bit))),
            }
        }
        let qkey = present(r, mask, QKEY)?;
        let access = present(r, mask, ACCESS)?;
        let dest_qpn = present(r, mask, DEST_QPN)?;
        let rq_psn = present(r, mask, RQ_PSN)?;
        let sq_psn = present(r, mask, SQ_PSN)?;
        let flow_label = present(r, mask, FLOW_LABEL)?;
        let pkey_index = present(r, mask, PKEY_INDEX)?;
        let state = present(r, mask, STATE)?;
        let port_num = present(r, mask, PORT_NUM)?;
        let path_mtu = present(r, mask, PATH_MTU)?;
        let max_rd_atomic = present(r, mask, MAX_RD_ATOMIC)?;
        let max_dest_rd_atomic = present(r, mask, MAX_DEST_RD_ATOMIC)?;
        let min_rnr_timer = present(r, mask, MIN_RNR_TIMER)?;
        let timeout = present(r, mask, TIMEOUT)?;
        let retry_cnt = present(r, mask, RETRY_CNT)?;
        let rnr_retry = present(r, mask, RNR_RETRY)?;
        let remote = present::<IpAddr>(r, mask, AV)?;
        let local: Option<IpAddr> = r.get()?;
        let av = match (remote, local) {
            (Some(remote), local) => Some(AddressVector { remote, local }),
            (None, None) => None,
            (None, Some(_)) => return Err(bad("unset attribute", u64::from(AV))),
        };
        Ok(QpAttr {
            state,
            pkey_index,
            port_num,
            qkey,
            access,
            path_mtu,
            dest_qpn,
            rq_psn,
            sq_psn,
            max_rd_atomic,
            max_dest_rd_atomic,
            min_rnr_timer,
            timeout,
            retry_cnt,
            rnr_retry,
            av,
            flow_label,
        })
    }
}

/// `VerbsError` codes (the first byte of an encoded error).
mod error_code {
    pub const INVALID_ARGUMENT: u8 = 1;
    pub const LIMIT_EXCEEDED: u8 = 2;
    pub const QUOTA_EXCEEDED: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const ALREADY_EXISTS: u8 = 5;
    pub const BUSY: u8 = 6;
    pub const INVALID_STATE_TRANSITION: u8 = 7;
    pub const MISSING_ATTRIBUTE: u8 = 8;
    pub const ATTRIBUTE_NOT_ALLOWED: u8 = 9;
    pub const INVALID_STATE: u8 = 10;
    pub const ACCESS_DENIED: u8 = 11;
    pub const QUEUE_FULL: u8 = 12;
}

/// `QpAttr` mask bits.
mod attr_bit {
    pub const STATE: u32 = 1 << 0;
    pub const PKEY_INDEX: u32 = 1 << 1;
    pub const PORT_NUM: u32 = 1 << 2;
    pub const QKEY: u32 = 1 << 3;
    pub const ACCESS: u32 = 1 << 4;
    pub const PATH_MTU: u32 = 1 << 5;
    pub const DEST_QPN: u32 = 1 << 6;
    pub const RQ_PSN: u32 = 1 << 7;
    pub const SQ_PSN: u32 = 1 << 8;
    pub const MAX_RD_ATOMIC: u32 = 1 << 9;
    pub const MAX_DEST_RD_ATOMIC: u32 = 1 << 10;
    pub const MIN_RNR_TIMER: u32 = 1 << 11;
    pub const TIMEOUT: u32 = 1 << 12;
    pub const RETRY_CNT: u32 = 1 << 13;
    pub const RNR_RETRY: u32 = 1 << 14;
    pub const AV: u32 = 1 << 15;
    pub const FLOW_LABEL: u32 = 1 << 16;
    pub const ALL: u32 = (1 << 17) - 1;
}
