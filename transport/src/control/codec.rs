//! The control protocol's binary encoding, version 1: what crosses a process boundary
//! (the daemon's Unix socket, one message per `SOCK_SEQPACKET` datagram). Embedded,
//! commands are passed in memory and never encoded.
//!
//! Every message is a 16-byte header and a body. Integers are little-endian and of
//! fixed size; every enum has explicit codes. The decoder
//! refuses what the encoder would not write (an unknown kind or code, a short or long
//! body, bytes of an unset attribute, a length over the limits), never panics, and what it
//! accepts encodes back to the same bytes.
//!
//! # Header
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | `length`: the whole message, header included ([`HEADER_LEN`] to [`MAX_MESSAGE_LEN`]) |
//! | 4 | 2 | `version`: [`VERSION`] |
//! | 6 | 2 | `kind`: which message ([`kind`]); commands below `0x8000`, replies from `0x8000` |
//! | 8 | 8 | `request_id`: chosen by a command's sender, copied into its reply |
//!
//! # Field types
//!
//! | type | size | encoding |
//! |------|-----:|----------|
//! | `u8`, `u16`, `u32`, `u64` | 1, 2, 4, 8 | little-endian |
//! | `bool` | 1 | 0 or 1 |
//! | `Qpn`, `Psn` | 4 | `u32` below 2^24 |
//! | `ProtectionDomain`, `Lkey`, `Rkey`, `CompletionQueueId`, `SharedReceiveQueueId` | 4 | `u32` |
//! | `AccessFlags` | 4 | `u32` of ibverbs bits: 1 LOCAL_WRITE, 2 REMOTE_WRITE, 4 REMOTE_READ, 8 REMOTE_ATOMIC |
//! | `QpType` | 1 | `ibv_qp_type`: 2 RC, 3 UC, 4 UD |
//! | `QpState` | 1 | `ibv_qp_state`: 0 RESET, 1 INIT, 2 RTR, 3 RTS, 4 SQD, 5 SQE, 6 ERR |
//! | `PathMtu` | 1 | `ibv_mtu`: 1 = 256, 2 = 512, 3 = 1024, 4 = 2048, 5 = 4096 |
//! | address | 17 | family `u8` (0 none, 4, 6), then 16 bytes: the IPv6 address, or the IPv4 address and 12 zero bytes |
//! | data | 4 + n | `u32` n (at most [`MAX_DATA_LEN`]), then n bytes |
//! | `usize` counts | 8 | `u64` |
//!
//! # Structures
//!
//! A structure is its fields in declaration order, each as its type says, with no
//! padding.
//!
//! `QpCap`, 20 bytes: `max_send_wr`, `max_recv_wr`, `max_send_sge`, `max_recv_sge`,
//! `max_inline_data`, each `u32`.
//!
//! `QpInitAttr`, 39 bytes:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 1 | `qp_type` |
//! | 1 | 4 | `pd` |
//! | 5 | 4 | `send_cq` |
//! | 9 | 4 | `recv_cq` |
//! | 13 | 1 | has an SRQ (bool) |
//! | 14 | 4 | `srq` (0 without one) |
//! | 18 | 20 | `cap` (`QpCap`) |
//! | 38 | 1 | `sq_sig_all` (bool) |
//!
//! `QpAttr`, 73 bytes. The mask says which attributes are set (`ibv_modify_qp`'s
//! attribute mask); an unset attribute's bytes are zero. Mask bits: 0 `state`,
//! 1 `pkey_index`, 2 `port_num`, 3 `qkey`, 4 `access`, 5 `path_mtu`, 6 `dest_qpn`,
//! 7 `rq_psn`, 8 `sq_psn`, 9 `max_rd_atomic`, 10 `max_dest_rd_atomic`,
//! 11 `min_rnr_timer`, 12 `timeout`, 13 `retry_cnt`, 14 `rnr_retry`, 15 `av`,
//! 16 `flow_label`; the others must be clear.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | mask |
//! | 4 | 4 | `qkey` |
//! | 8 | 4 | `access` (`AccessFlags`) |
//! | 12 | 4 | `dest_qpn` (`Qpn`) |
//! | 16 | 4 | `rq_psn` (`Psn`) |
//! | 20 | 4 | `sq_psn` (`Psn`) |
//! | 24 | 4 | `flow_label` |
//! | 28 | 2 | `pkey_index` |
//! | 30 | 1 | `state` (`QpState`) |
//! | 31 | 1 | `port_num` |
//! | 32 | 1 | `path_mtu` (`PathMtu`) |
//! | 33 | 1 | `max_rd_atomic` |
//! | 34 | 1 | `max_dest_rd_atomic` |
//! | 35 | 1 | `min_rnr_timer` |
//! | 36 | 1 | `timeout` |
//! | 37 | 1 | `retry_cnt` |
//! | 38 | 1 | `rnr_retry` |
//! | 39 | 17 | `av.remote` (address, family 4 or 6; all zero when `av` is unset) |
//! | 56 | 17 | `av.local` (address, family 0 for none) |
//!
//! `QpInfo`, 124 bytes: `qpn` (4), `qp_type` (1), `state` (1), `attr` (`QpAttr`, 73),
//! `cap` (`QpCap`, 20), `send_outstanding`, `recv_outstanding`, `responses_queued`
//! (8 each).
//!
//! `SrqAttr`, 12 bytes: `max_wr`, `max_sge`, `srq_limit`, each `u32`.
//!
//! `RecvWr`, 12 + 16 n bytes: `wr_id` (`u64`), n (`u32`), then n SGEs, each `addr`
//! (`u64`), `length` (`u32`), `lkey` (4).
//!
//! `MemoryRegion`, 32 bytes: `pd`, `lkey`, `rkey` (4 each), `addr`, `length` (`u64`
//! each), `access` (4).
//!
//! `DeviceAttributes`, 59 bytes: `limits`, the `DeviceLimits` `max_qp`, `max_qp_wr`,
//! `max_sge`, `max_cq`, `max_cqe`, `max_mr` (`u32` each), `max_mr_size` (`u64`),
//! `max_pd`, `max_srq`, `max_srq_wr`, `max_srq_sge`, `max_inline_data` (`u32` each),
//! `max_qp_rd_atom`, `max_qp_init_rd_atom` (`u8` each), `max_async_events` (`u32`);
//! then `active_mtu` (`PathMtu`).
//!
//! `PortStatus`, 6 bytes: `active` (bool), `active_mtu` (`PathMtu`), `gid_tbl_len`
//! (`u32`).
//!
//! `Counters`, 432 bytes: 54 `u64`s. The engine's `Counters` in declaration order
//! (`packets_in` … `async_events_dropped`: 12), `naks_sent` and `naks_received` (6 each:
//! `psn_sequence`, `rnr`, `invalid_request`, `remote_access`, `remote_operational`,
//! `other`), `drops` (15: `malformed` … `too_long` in declaration order); then the
//! engine thread's `ThreadCounters` in declaration order (15: `rounds` …
//! `lost_post_errors`). Adding a counter changes the layout: a new version.
//!
//! `VerbsError`: a code `u8`, then
//!
//! | code | error | then |
//! |-----:|-------|------|
//! | 1 | `InvalidArgument` | reason |
//! | 2 | `LimitExceeded` | reason |
//! | 3 | `QuotaExceeded` | resource `u8` (0 QPs, 1 CQs, 2 SRQs, 3 MRs, 4 registered bytes, 5 work requests), `limit` `u64` |
//! | 4 | `NotFound` | reason |
//! | 5 | `AlreadyExists` | reason |
//! | 6 | `Busy` | reason |
//! | 7 | `InvalidStateTransition` | `qp_type`, `from`, `to` (`QpState`s) |
//! | 8 | `MissingAttribute` | reason |
//! | 9 | `AttributeNotAllowed` | reason |
//! | 10 | `InvalidState` | `QpState` |
//! | 11 | `AccessDenied` | reason |
//! | 12 | `QueueFull` | nothing |
//!
//! A reason is a length `u8` and that many bytes of UTF-8, one of the reasons the
//! engine gives (a decoder refuses a reason its build does not know).
//!
//! # Commands
//!
//! | kind | command | body | reply |
//! |-----:|---------|------|-------|
//! | `0x0001` | `QueryDevice` | empty | `Device` |
//! | `0x0002` | `QueryPort` | empty | `Port` |
//! | `0x0003` | `QueryGids` | empty | `Gids` |
//! | `0x0004` | `QueryCounters` | empty | `Counters` |
//! | `0x0010` | `AllocPd` | empty | `Pd` |
//! | `0x0011` | `DeallocPd` | `pd` (4) | `Done` |
//! | `0x0020` | `RegMr` | `pd` (4), `access` (4), `length` (`u64`) | `Mr` |
//! | `0x0021` | `DeregMr` | `lkey` (4) | `Done` |
//! | `0x0022` | `MrWrite` | `lkey` (4), `addr` (`u64`), data | `Done` |
//! | `0x0023` | `MrRead` | `lkey` (4), `addr` (`u64`), `length` (`u64`, at most [`MAX_DATA_LEN`]) | `Bytes` |
//! | `0x0030` | `CreateCq` | `cqe` (`u32`) | `Cq` |
//! | `0x0031` | `DestroyCq` | `cq` (4) | `Done` |
//! | `0x0040` | `CreateQp` | `QpInitAttr` (39) | `Qp` |
//! | `0x0041` | `ModifyQp` | `qpn` (4), `QpAttr` (73) | `Done` |
//! | `0x0042` | `QueryQp` | `qpn` (4) | `QpInfo` |
//! | `0x0043` | `DestroyQp` | `qpn` (4) | `Done` |
//! | `0x0050` | `CreateSrq` | `pd` (4), `SrqAttr` (12) | `Srq` |
//! | `0x0051` | `ModifySrq` | `srq` (4), `srq_limit` (`u32`) | `Done` |
//! | `0x0052` | `QuerySrq` | `srq` (4) | `SrqAttr` |
//! | `0x0053` | `DestroySrq` | `srq` (4) | `Done` |
//! | `0x0054` | `PostSrqRecv` | `srq` (4), `RecvWr` | `Done` |
//!
//! Any command may instead be answered by `Error`.
//!
//! # Replies
//!
//! | kind | reply | body |
//! |-----:|-------|------|
//! | `0x8000` | `Done` | empty |
//! | `0x8001` | `Error` | `VerbsError` |
//! | `0x8002` | `Device` | `DeviceAttributes` (59) |
//! | `0x8003` | `Port` | `PortStatus` (6) |
//! | `0x8004` | `Gids` | n (`u32`), then n addresses (17 each, family 4 or 6) |
//! | `0x8005` | `Counters` | `Counters` (432) |
//! | `0x8010` | `Pd` | `pd` (4) |
//! | `0x8020` | `Mr` | `MemoryRegion` (32) |
//! | `0x8021` | `Bytes` | data |
//! | `0x8030` | `Cq` | `cq` (4) |
//! | `0x8040` | `Qp` | `qpn` (4) |
//! | `0x8041` | `QpInfo` | `QpInfo` (124) |
//! | `0x8050` | `Srq` | `srq` (4) |
//! | `0x8051` | `SrqAttr` | `SrqAttr` (12) |

use super::command::{Command, Reply};
use super::fields::{Reader, Writer, IP_LEN};

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 16;
/// Most bytes one `MrWrite` carries or one `MrRead` asks for (larger copies go in
/// pieces).
pub const MAX_DATA_LEN: usize = 64 * 1024;
/// Longest message: an `MrWrite` of [`MAX_DATA_LEN`] bytes.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + 16 + MAX_DATA_LEN;

/// Message kinds (the header's `kind`).
pub mod kind {
    /// [`Command::QueryDevice`](super::Command::QueryDevice).
    pub const QUERY_DEVICE: u16 = 0x0001;
    /// [`Command::QueryPort`](super::Command::QueryPort).
    pub const QUERY_PORT: u16 = 0x0002;
    /// [`Command::QueryGids`](super::Command::QueryGids).
    pub const QUERY_GIDS: u16 = 0x0003;
    /// [`Command::QueryCounters`](super::Command::QueryCounters).
    pub const QUERY_COUNTERS: u16 = 0x0004;
    /// [`Command::AllocPd`](super::Command::AllocPd).
    pub const ALLOC_PD: u16 = 0x0010;
    /// [`Command::DeallocPd`](super::Command::DeallocPd).
    pub const DEALLOC_PD: u16 = 0x0011;
    /// [`Command::RegMr`](super::Command::RegMr).
    pub const REG_MR: u16 = 0x0020;
    /// [`Command::DeregMr`](super::Command::DeregMr).
    pub const DEREG_MR: u16 = 0x0021;
    /// [`Command::MrWrite`](super::Command::MrWrite).
    pub const MR_WRITE: u16 = 0x0022;
    /// [`Command::MrRead`](super::Command::MrRead).
    pub const MR_READ: u16 = 0x0023;
    /// [`Command::CreateCq`](super::Command::CreateCq).
    pub const CREATE_CQ: u16 = 0x0030;
    /// [`Command::DestroyCq`](super::Command::DestroyCq).
    pub const DESTROY_CQ: u16 = 0x0031;
    /// [`Command::CreateQp`](super::Command::CreateQp).
    pub const CREATE_QP: u16 = 0x0040;
    /// [`Command::ModifyQp`](super::Command::ModifyQp).
    pub const MODIFY_QP: u16 = 0x0041;
    /// [`Command::QueryQp`](super::Command::QueryQp).
    pub const QUERY_QP: u16 = 0x0042;
    /// [`Command::DestroyQp`](super::Command::DestroyQp).
    pub const DESTROY_QP: u16 = 0x0043;
    /// [`Command::CreateSrq`](super::Command::CreateSrq).
    pub const CREATE_SRQ: u16 = 0x0050;
    /// [`Command::ModifySrq`](super::Command::ModifySrq).
    pub const MODIFY_SRQ: u16 = 0x0051;
    /// [`Command::QuerySrq`](super::Command::QuerySrq).
    pub const QUERY_SRQ: u16 = 0x0052;
    /// [`Command::DestroySrq`](super::Command::DestroySrq).
    pub const DESTROY_SRQ: u16 = 0x0053;
    /// [`Command::PostSrqRecv`](super::Command::PostSrqRecv).
    pub const POST_SRQ_RECV: u16 = 0x0054;

    /// [`Reply::Done`](super::Reply::Done).
    pub const DONE: u16 = 0x8000;
    /// [`Reply::Error`](super::Reply::Error).
    pub const ERROR: u16 = 0x8001;
    /// [`Reply::Device`](super::Reply::Device).
    pub const DEVICE: u16 = 0x8002;
    /// [`Reply::Port`](super::Reply::Port).
    pub const PORT: u16 = 0x8003;
    /// [`Reply::Gids`](super::Reply::Gids).
    pub const GIDS: u16 = 0x8004;
    /// [`Reply::Counters`](super::Reply::Counters).
    pub const COUNTERS: u16 = 0x8005;
    /// [`Reply::Pd`](super::Reply::Pd).
    pub const PD: u16 = 0x8010;
    /// [`Reply::Mr`](super::Reply::Mr).
    pub const MR: u16 = 0x8020;
    /// [`Reply::Bytes`](super::Reply::Bytes).
    pub const BYTES: u16 = 0x8021;
    /// [`Reply::Cq`](super::Reply::Cq).
    pub const CQ: u16 = 0x8030;
    /// [`Reply::Qp`](super::Reply::Qp).
    pub const QP: u16 = 0x8040;
    /// [`Reply::QpInfo`](super::Reply::QpInfo).
    pub const QP_INFO: u16 = 0x8041;
    /// [`Reply::Srq`](super::Reply::Srq).
    pub const SRQ: u16 = 0x8050;
    /// [`Reply::SrqAttr`](super::Reply::SrqAttr).
    pub const SRQ_ATTR: u16 = 0x8051;
}

/// Why bytes are not a message of this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message ends before a field it needs.
    #[error("message truncated: {needed} bytes needed, {available} there")]
    Truncated {
        /// Bytes needed (header included, or of the body being read).
        needed: usize,
        /// Bytes there.
        available: usize,
    },
    /// Bytes follow the message's last field (or the header's `length`).
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    /// The header's `length` is less than a header or more than [`MAX_MESSAGE_LEN`].
    #[error("message length {0} outside {HEADER_LEN}..={MAX_MESSAGE_LEN}")]
    BadLength(u32),
    /// Another protocol version.
    #[error("protocol version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u16),
    /// No message of this kind (or not a command where one is expected, or not a reply).
    #[error("unknown message kind {0:#06x}")]
    UnknownKind(u16),
    /// A field holds a value no message has (an enum code, a bool, an address's padding, a
    /// 24-bit number's upper bits, an unknown flag).
    #[error("{field}: invalid value {value:#x}")]
    BadValue {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A field over its limit.
    #[error("{field} {value} over the limit of {limit}")]
    OverLimit {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// An error's reason is not one this build knows.
    #[error("an error reason this build does not know")]
    UnknownReason,
}

/// Why a message cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field or the whole message is over the protocol's limit.
    #[error("{field} of {length} over the limit of {limit}")]
    TooLong {
        /// What is too long.
        field: &'static str,
        /// Its length.
        length: u64,
        /// The limit.
        limit: u64,
    },
    /// An error's reason is not in the protocol's table (see `reasons`).
    #[error("error reason {0:?} unknown to the protocol")]
    UnknownReason(&'static str),
}

/// A message's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The whole message's length, header included.
    pub length: u32,
    /// Protocol version.
    pub version: u16,
    /// Message kind ([`kind`]).
    pub kind: u16,
    /// Request id (a reply has its command's).
    pub request_id: u64,
}

impl Header {
    /// The header at the start of `bytes` (which may hold just the header): refused
    /// when short, of another version, or with a `length` out of bounds.
    pub fn parse(bytes: &[u8]) -> Result<Header, DecodeError> {
        let mut reader = Reader::new(bytes);
        let length: u32 = reader.get()?;
        let version: u16 = reader.get()?;
        let kind: u16 = reader.get()?;
        let request_id: u64 = reader.get()?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&(length as usize)) {
            return Err(DecodeError::BadLength(length));
        }
        Ok(Header {
            length,
            version,
            kind,
            request_id,
        })
    }

    /// The header and the body of the message `bytes`, which must be exactly
    /// `length` long.
    fn split(bytes: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
        let header = Header::parse(bytes)?;
        let length = header.length as usize;
        match bytes.len() {
            n if n < length => Err(DecodeError::Truncated {
                needed: length,
                available: n,
            }),
            n if n > length => Err(DecodeError::TrailingBytes(n - length)),
            _ => Ok((header, &bytes[HEADER_LEN..])),
        }
    }
}

/// Appends a header and the body `body` writes to `out`; on error `out` is as it was.
fn emit_message(
    out: &mut Vec<u8>,
    kind: u16,
    request_id: u64,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let written = body(&mut Writer::new(out));
    let length = out.len() - start;
    if let Err(error) = written {
        out.truncate(start);
        return Err(error);
    }
    if length > MAX_MESSAGE_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLong {
            field: "message",
            length: length as u64,
            limit: MAX_MESSAGE_LEN as u64,
        });
    }
    let header = &mut out[start..start + HEADER_LEN];
    header[0..4].copy_from_slice(&(length as u32).to_le_bytes());
    header[4..6].copy_from_slice(&VERSION.to_le_bytes());
    header[6..8].copy_from_slice(&kind.to_le_bytes());
    header[8..16].copy_from_slice(&request_id.to_le_bytes());
    Ok(())
}

/// Refuses data longer than [`MAX_DATA_LEN`].
fn check_data(field: &'static str, length: u64) -> Result<(), EncodeError> {
    if length > MAX_DATA_LEN as u64 {
        return Err(EncodeError::TooLong {
            field,
            length,
            limit: MAX_DATA_LEN as u64,
        });
    }
    Ok(())
}

impl Command {
    /// The message kind ([`kind`]).
    pub fn kind(&self) -> u16 {
        match self {
            Command::QueryDevice => kind::QUERY_DEVICE,
            Command::QueryPort => kind::QUERY_PORT,
            Command::QueryGids => kind::QUERY_GIDS,
            Command::QueryCounters => kind::QUERY_COUNTERS,
            Command::AllocPd => kind::ALLOC_PD,
            Command::DeallocPd { .. } => kind::DEALLOC_PD,
            Command::RegMr { .. } => kind::REG_MR,
            Command::DeregMr { .. } => kind::DEREG_MR,
            Command::MrWrite { .. } => kind::MR_WRITE,
            Command::MrRead { .. } => kind::MR_READ,
            Command::CreateCq { .. } => kind::CREATE_CQ,
            Command::DestroyCq { .. } => kind::DESTROY_CQ,
            Command::CreateQp { .. } => kind::CREATE_QP,
            Command::ModifyQp { .. } => kind::MODIFY_QP,
            Command::QueryQp { .. } => kind::QUERY_QP,
            Command::DestroyQp { .. } => kind::DESTROY_QP,
            Command::CreateSrq { .. } => kind::CREATE_SRQ,
            Command::ModifySrq { .. } => kind::MODIFY_SRQ,
            Command::QuerySrq { .. } => kind::QUERY_SRQ,
            Command::DestroySrq { .. } => kind::DESTROY_SRQ,
            Command::PostSrqRecv { .. } => kind::POST_SRQ_RECV,
        }
    }

    /// Appends the message of this command with `request_id` to `out`.
    pub fn emit(&self, request_id: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        emit_message(out, self.kind(), request_id, |w| {
            match self {
                Command::QueryDevice
                | Command::QueryPort
                | Command::QueryGids
                | Command::QueryCounters
                | Command::AllocPd => {}
                Command::DeallocPd { pd } => w.put(pd),
                Command::RegMr { pd, length, access } => {
                    w.put(pd);
                    w.put(access);
                    w.put(length);
                }
                Command::DeregMr { lkey } => w.put(lkey),
                Command::MrWrite { lkey, addr, data } => {
                    check_data("MrWrite data", data.len() as u64)?;
                    w.put(lkey);
                    w.put(addr);
                    w.data(data);
                }
                Command::MrRead { lkey, addr, length } => {
                    check_data("MrRead length", *length)?;
                    w.put(lkey);
                    w.put(addr);
                    w.put(length);
                }
                Command::CreateCq { cqe } => w.put(cqe),
                Command::DestroyCq { cq } => w.put(cq),
                Command::CreateQp { init } => w.put(init),
                Command::ModifyQp { qpn, attr } => {
                    w.put(qpn);
                    w.put(attr);
                }
                Command::QueryQp { qpn } | Command::DestroyQp { qpn } => w.put(qpn),
                Command::CreateSrq { pd, attr } => {
                    w.put(pd);
                    w.put(attr);
                }
                Command::ModifySrq { srq, srq_limit } => {
                    w.put(srq);
                    w.put(srq_limit);
                }
                Command::QuerySrq { srq } | Command::DestroySrq { srq } => w.put(srq),
                Command::PostSrqRecv { srq, wr } => {
                    w.put(srq);
                    w.put(wr);
                }
            }
            Ok(())
        })
    }

    /// The command in the message `bytes` (exactly one message), with its request id.
    pub fn parse(bytes: &[u8]) -> Result<(u64, Command), DecodeError> {
        let (header, body) = Header::split(bytes)?;
        let mut r = Reader::new(body);
        let command = match header.kind {
            kind::QUERY_DEVICE => Command::QueryDevice,
            kind::QUERY_PORT => Command::QueryPort,
            kind::QUERY_GIDS => Command::QueryGids,
            kind::QUERY_COUNTERS => Command::QueryCounters,
            kind::ALLOC_PD => Command::AllocPd,
            kind::DEALLOC_PD => Command::DeallocPd { pd: r.get()? },
            kind::REG_MR => Command::RegMr {
                pd: r.get()?,
                access: r.get()?,
                length: r.get()?,
            },
            kind::DEREG_MR => Command::DeregMr { lkey: r.get()? },
            kind::MR_WRITE => Command::MrWrite {
                lkey: r.get()?,
                addr: r.get()?,
                data: r.data(MAX_DATA_LEN)?,
            },
            kind::MR_READ => {
                let (lkey, addr, length) = (r.get()?, r.get()?, r.get()?);
                if length > MAX_DATA_LEN as u64 {
                    return Err(DecodeError::OverLimit {
                        field: "MrRead length",
                        value: length,
                        limit: MAX_DATA_LEN as u64,
                    });
                }
                Command::MrRead { lkey, addr, length }
            }
            kind::CREATE_CQ => Command::CreateCq { cqe: r.get()? },
            kind::DESTROY_CQ => Command::DestroyCq { cq: r.get()? },
            kind::CREATE_QP => Command::CreateQp { init: r.get()? },
            kind::MODIFY_QP => Command::ModifyQp {
                qpn: r.get()?,
                attr: r.get()?,
            },
            kind::QUERY_QP => Command::QueryQp { qpn: r.get()? },
            kind::DESTROY_QP => Command::DestroyQp { qpn: r.get()? },
            kind::CREATE_SRQ => Command::CreateSrq {
                pd: r.get()?,
                attr: r.get()?,
            },
            kind::MODIFY_SRQ => Command::ModifySrq {
                srq: r.get()?,
                srq_limit: r.get()?,
            },
            kind::QUERY_SRQ => Command::QuerySrq { srq: r.get()? },
            kind::DESTROY_SRQ => Command::DestroySrq { srq: r.get()? },
            kind::POST_SRQ_RECV => Command::PostSrqRecv {
                srq: r.get()?,
                wr: r.get()?,
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok((header.request_id, command))
    }
}

impl Reply {
    /// The message kind ([`kind`]).
    pub fn kind(&self) -> u16 {
        match self {
            Reply::Done => kind::DONE,
            Reply::Error(_) => kind::ERROR,
            Reply::Device(_) => kind::DEVICE,
            Reply::Port(_) => kind::PORT,
            Reply::Gids(_) => kind::GIDS,
            Reply::Counters { .. } => kind::COUNTERS,
            Reply::Pd(_) => kind::PD,
            Reply::Mr(_) => kind::MR,
            Reply::Bytes(_) => kind::BYTES,
            Reply::Cq(_) => kind::CQ,
            Reply::Qp(_) => kind::QP,
            Reply::QpInfo(_) => kind::QP_INFO,
            Reply::Srq(_) => kind::SRQ,
            Reply::SrqAttr(_) => kind::SRQ_ATTR,
        }
    }

    /// Appends the message of this reply to the command `request_id` to `out`.
    pub fn emit(&self, request_id: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        emit_message(out, self.kind(), request_id, |w| {
            match self {
                Reply::Done => {}
                Reply::Error(error) => w.verbs_error(error)?,
                Reply::Device(attributes) => w.put(attributes),
                Reply::Port(port) => w.put(port),
                Reply::Gids(gids) => {
                    w.put(&(gids.len() as u32));
                    for gid in gids {
                        w.put(gid);
                    }
                }
                Reply::Counters { engine, thread } => {
                    w.put(&**engine);
                    w.put(thread);
                }
                Reply::Pd(pd) => w.put(pd),
                Reply::Mr(mr) => w.put(mr),
                Reply::Bytes(bytes) => {
                    check_data("Bytes data", bytes.len() as u64)?;
                    w.data(bytes);
                }
                Reply::Cq(cq) => w.put(cq),
                Reply::Qp(qpn) => w.put(qpn),
                Reply::QpInfo(info) => w.put(info),
                Reply::Srq(srq) => w.put(srq),
                Reply::SrqAttr(attr) => w.put(attr),
            }
            Ok(())
        })
    }

    /// The reply in the message `bytes` (exactly one message), with its request id.
    pub fn parse(bytes: &[u8]) -> Result<(u64, Reply), DecodeError> {
        let (header, body) = Header::split(bytes)?;
        let mut r = Reader::new(body);
        let reply = match header.kind {
            kind::DONE => Reply::Done,
            kind::ERROR => Reply::Error(r.verbs_error()?),
            kind::DEVICE => Reply::Device(r.get()?),
            kind::PORT => Reply::Port(r.get()?),
            kind::GIDS => {
                let count = r.count(IP_LEN)?;
                let gids = (0..count).map(|_| r.get()).collect::<Result<_, _>>()?;
                Reply::Gids(gids)
            }
            kind::COUNTERS => Reply::Counters {
                engine: Box::new(r.get()?),
                thread: r.get()?,
            },
            kind::PD => Reply::Pd(r.get()?),
            kind::MR => Reply::Mr(r.get()?),
            kind::BYTES => Reply::Bytes(r.data(MAX_DATA_LEN)?),
            kind::CQ => Reply::Cq(r.get()?),
            kind::QP => Reply::Qp(r.get()?),
            kind::QP_INFO => Reply::QpInfo(r.get()?),
            kind::SRQ => Reply::Srq(r.get()?),
            kind::SRQ_ATTR => Reply::SrqAttr(r.get()?),
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok((header.request_id, reply))
    }
}
