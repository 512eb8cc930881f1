//! The requester: turns send WRs into packets (segmentation at the path MTU, PSN
//! assignment, AckReq policy), keeps the retransmit and RNR timers, and rewinds for
//! go-back-N.

use ferroce_wire::{atomic, bth, deth, ieth, imm, packet, reth, OpCode, Psn};

use super::super::cq::WcStatus;
use super::super::memory::Key;
use super::super::timer;
use super::retransmit::{Expiry, RetransmitTimer};
use super::{Context, Outgoing, QpState, QpType, QueuePair, SendOp};

/// At most this many PSNs unacknowledged while nothing is lost. rxe keeps 128
/// (`RXE_MAX_UNACKED_PSNS`); twice that keeps a stream of small WRITEs 256 deep
/// (perftest's `-t 256`) from stopping to wait for ACKs.
pub const MAX_UNACKED_PSNS: i32 = 256;
/// Each loss (a retransmit timeout or a NAK that rewinds) halves the window, down to
/// this (rxe's); each ACK that moves it on gives one PSN back. Go-back-N resends the
/// whole window after a loss, so on a lossy path a smaller one wastes less; but against
/// rxe in a guest a window cut to twice the measured bandwidth-delay product (at least
/// 32) made a 64 MiB WRITE at 1% loss miss a 900 s limit that 128 meets in 75 s.
pub const MIN_UNACKED_PSNS: i32 = 128;
/// AckReq at least every this many packets (rxe's `RXE_MAX_PKT_PER_ACK`).
pub const MAX_PACKETS_PER_ACK: u32 = 64;

/// Vendor error codes in failed send completions.
pub(crate) mod vendor_err {
    /// A local key, PD or bounds check failed while gathering or scattering.
    pub const LOCAL_KEY: u32 = 1;
    /// The retransmit timer ran out of retries.
    pub const RETRY_EXHAUSTED: u32 = 2;
    /// RNR retries ran out.
    pub const RNR_EXHAUSTED: u32 = 3;
    /// The responder NAKed.
    pub const REMOTE_NAK: u32 = 4;
    /// A response that does not fit the request.
    pub const BAD_RESPONSE: u32 = 5;
    /// The send could not be addressed (no local GID of the peer's family).
    pub const NO_ROUTE: u32 = 6;
}

/// Requester and completer state of a QP.
#[derive(Debug, Default)]
pub(crate) struct Requester {
    /// PSN of the next packet to send.
    pub next_psn: Psn,
    /// Oldest PSN not yet acknowledged (or, inside a READ, the next response expected).
    pub comp_psn: Psn,
    /// One past the highest PSN ever sent: PSNs before it are retransmissions.
    pub send_high: Psn,
    /// Index in the send queue of the WR being sent.
    pub send_index: usize,
    /// Bytes of that WR already sent.
    pub send_offset: u32,
    /// Transport and RNR retries left (reset on progress).
    pub retry_left: u8,
    pub rnr_left: u8,
    /// The retransmit timer (adaptive, and when a timeout spends a retry).
    pub timer: RetransmitTimer,
    /// Sending paused until the RNR timer ends.
    pub rnr_until: Option<crate::engine::Time>,
    /// The PSN the last counted go-back-N rewound to (cleared on progress).
    pub retrying_from: Option<Psn>,
    /// The PSN of the RNR NAK being waited out, until that PSN is sent again: the same
    /// NAK arriving twice (a duplicating network) must not spend two retries.
    pub rnr_nak_psn: Option<Psn>,
    /// Packets sent since the last AckReq.
    pub since_ack_req: u32,
    /// PSNs taken off [`MAX_UNACKED_PSNS`] by losses (see [`MIN_UNACKED_PSNS`]).
    pub window_cut: i32,
    /// MTU of UD messages (the port's active MTU).
    pub ud_mtu: u32,
}

impl Requester {
    pub fn reset_psn(&mut self, psn: Psn) {
        self.next_psn = psn;
        self.comp_psn = psn;
        self.send_high = psn;
    }

    /// How many PSNs may be unacknowledged now.
    pub fn window(&self) -> i32 {
        MAX_UNACKED_PSNS - self.window_cut
    }

    /// A loss: halve the window.
    pub fn shrink_window(&mut self) {
        let halved = (self.window() / 2).max(MIN_UNACKED_PSNS);
        self.window_cut = MAX_UNACKED_PSNS - halved;
    }

    /// An ACK moved the window on: widen it by one PSN.
    pub fn widen_window(&mut self) {
        self.window_cut = (self.window_cut - 1).max(0);
    }
}

fn send_opcode(qp_type: QpType, op: SendOp, first: bool, last: bool) -> OpCode {
    use OpCode::*;
    let rc = qp_type == QpType::Rc;
    macro_rules! pick {
        ($rc:ident, $uc:ident) => {
            if rc {
                $rc
            } else {
                $uc
            }
        };
    }
    match (op, first, last) {
        (SendOp::Send | SendOp::SendWithImm(_) | SendOp::SendWithInv(_), true, false) => {
            pick!(RcSendFirst, UcSendFirst)
        }
        (SendOp::Send | SendOp::SendWithImm(_) | SendOp::SendWithInv(_), false, false) => {
            pick!(RcSendMiddle, UcSendMiddle)
        }
        (SendOp::Send, false, true) => pick!(RcSendLast, UcSendLast),
        (SendOp::Send, true, true) => pick!(RcSendOnly, UcSendOnly),
        (SendOp::SendWithImm(_), false, true) => pick!(RcSendLastImm, UcSendLastImm),
        (SendOp::SendWithImm(_), true, true) => pick!(RcSendOnlyImm, UcSendOnlyImm),
        (SendOp::SendWithInv(_), false, true) => RcSendLastInv,
        (SendOp::SendWithInv(_), true, true) => RcSendOnlyInv,
        (_, true, false) => pick!(RcWriteFirst, UcWriteFirst),
        (_, false, false) => pick!(RcWriteMiddle, UcWriteMiddle),
        (SendOp::RdmaWriteWithImm { .. }, false, true) => pick!(RcWriteLastImm, UcWriteLastImm),
        (SendOp::RdmaWriteWithImm { .. }, true, true) => pick!(RcWriteOnlyImm, UcWriteOnlyImm),
        (_, false, true) => pick!(RcWriteLast, UcWriteLast),
        (_, true, true) => pick!(RcWriteOnly, UcWriteOnly),
    }
}

/// PSNs a message of `length` bytes uses at `mtu` (at least one).
pub(crate) fn packets_for(length: u32, mtu: u32) -> u32 {
    length.div_ceil(mtu).max(1)
}

impl QueuePair {
    fn bth(&self, opcode: OpCode, psn: Psn, ack_req: bool) -> bth::Repr {
        bth::Repr {
            opcode,
            solicited: false,
            migreq: false,
            pad_count: 0,
            pkey: bth::DEFAULT_PKEY,
            fecn: false,
            becn: false,
            dest_qp: self.attr.dest_qpn.unwrap_or_default(),
            ack_req,
            psn,
        }
    }

    /// True while a READ or atomic before send-queue index `index` is unfinished.
    fn read_atomic_outstanding(&self, index: usize) -> usize {
        self.sq
            .iter()
            .take(index)
            .filter(|w| w.started && !w.done && w.wr.op.is_read_or_atomic())
            .count()
    }

    /// The negotiated retransmit timeout (`None`: timeout 0, no timer).
    pub(crate) fn ack_timeout(&self) -> Option<std::time::Duration> {
        timer::ack_timeout(self.attr.timeout.unwrap_or(0))
    }

    /// Rewinds to the oldest unacknowledged PSN (go-back-N). Also used to skip ahead
    /// when a late ACK acknowledged what was about to be resent.
    pub(crate) fn go_back(&mut self) {
        let mtu = self.path_mtu();
        self.req.send_index = 0;
        self.req.next_psn = self.req.comp_psn;
        self.req.send_offset = 0;
        self.req.since_ack_req = 0;
        self.req.timer.rewound();
        if let Some(front) = self.sq.front() {
            if front.started && !front.wr.op.is_atomic() {
                let acked = self.req.comp_psn.diff(front.first_psn).max(0) as u64;
                let offset = (acked * u64::from(mtu)).min(u64::from(front.length));
                self.req.send_offset = offset as u32;
            }
        }
    }

    /// The next request packet, if the send queue has one ready.
    pub(crate) fn poll_request(&mut self, ctx: &mut Context<'_>) -> Option<Outgoing> {
        if !matches!(self.state, QpState::Rts | QpState::Sqd) || self.req.rnr_until.is_some() {
            return None;
        }
        loop {
            let index = self.req.send_index;
            let wqe = self.sq.get(index)?;
            let starting = self.req.send_offset == 0 && !(index == 0 && wqe.started);
            if self.state == QpState::Sqd && starting {
                return None;
            }
            if wqe.done {
                // A local operation already executed (kept for in-order completion).
                self.req.send_index += 1;
                continue;
            }
            if let SendOp::LocalInv(rkey) = wqe.wr.op {
                let result = ctx.memory.invalidate(Key::Remote(rkey), self.pd);
                let wqe = &mut self.sq[index];
                wqe.done = true;
                wqe.started = true;
                self.req.send_index += 1;
                if result.is_err() {
                    // rxe_do_local_ops: a failed invalidation is a local QP operation
                    // error, and the QP goes to ERR.
                    wqe.status = WcStatus::LocQpOpErr;
                    wqe.vendor_err = vendor_err::LOCAL_KEY;
                    self.enter_error(ctx);
                    return None;
                }
                continue;
            }
            let rc = self.qp_type == QpType::Rc;
            if rc && self.req.next_psn.diff(self.req.comp_psn) >= self.req.window() {
                return None;
            }
            if rc && starting && self.req.window_cut > 0 && self.req.next_psn != self.req.comp_psn {
                if let SendOp::RdmaRead { .. } = wqe.wr.op {
                    // After a loss, a READ starts only if its responses fit in the
                    // window: the responder sends them all at once, and a gap in an
                    // earlier READ's answer makes go-back-N ask for all of them again.
                    let psns = packets_for(wqe.length, self.path_mtu()) as i32;
                    if self.req.next_psn.diff(self.req.comp_psn) + psns > self.req.window() {
                        return None;
                    }
                }
            }
            if starting && wqe.wr.fence && self.read_atomic_outstanding(index) > 0 {
                return None;
            }
            if starting
                && wqe.wr.op.is_read_or_atomic()
                && self.read_atomic_outstanding(index)
                    >= usize::from(self.attr.max_rd_atomic.unwrap_or(0))
            {
                return None;
            }
            return self.build_request(index, ctx);
        }
    }

    fn build_request(&mut self, index: usize, ctx: &mut Context<'_>) -> Option<Outgoing> {
        let mtu = if self.qp_type == QpType::Ud {
            self.req.ud_mtu
        } else {
            self.path_mtu()
        };
        let psn = self.req.next_psn;
        let offset = self.req.send_offset;
        if self.req.rnr_nak_psn == Some(psn) {
            self.req.rnr_nak_psn = None;
        }
        {
            let wqe = &mut self.sq[index];
            if offset == 0 && !(index == 0 && wqe.started && wqe.wr.op.is_read_or_atomic()) {
                wqe.first_psn = psn;
                let psns = match wqe.wr.op {
                    SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. } => 1,
                    _ => packets_for(wqe.length, mtu),
                };
                wqe.last_psn = psn.add(psns - 1);
                wqe.started = true;
            }
        }
        let wqe = &self.sq[index];
        let op = wqe.wr.op;
        let (src, dst) = match self.addresses(index, ctx) {
            Some(pair) => pair,
            None => {
                self.fail_send(WcStatus::LocQpOpErr, vendor_err::NO_ROUTE, ctx);
                return None;
            }
        };
        let mut repr;
        let mut payload_len = 0u32;
        let psns_used;
        let mut finished = false;
        match op {
            SendOp::RdmaRead { remote_addr, rkey } => {
                let remaining = wqe.length - offset;
                repr = packet::Repr::new(self.bth(OpCode::RcReadRequest, psn, true));
                repr.reth = Some(reth::Repr {
                    virtual_address: remote_addr.wrapping_add(u64::from(offset)),
                    rkey,
                    dma_length: remaining,
                });
                psns_used = packets_for(remaining, mtu);
                self.req.send_index += 1;
                self.req.send_offset = 0;
            }
            SendOp::CompareSwap {
                remote_addr,
                rkey,
                compare,
                swap,
            } => {
                repr = packet::Repr::new(self.bth(OpCode::RcCompareSwap, psn, true));
                repr.atomic_eth = Some(atomic::eth::Repr {
                    virtual_address: remote_addr,
                    rkey,
                    swap_add: swap,
                    compare,
                });
                psns_used = 1;
                self.req.send_index += 1;
            }
            SendOp::FetchAdd {
                remote_addr,
                rkey,
                add,
            } => {
                repr = packet::Repr::new(self.bth(OpCode::RcFetchAdd, psn, true));
                repr.atomic_eth = Some(atomic::eth::Repr {
                    virtual_address: remote_addr,
                    rkey,
                    swap_add: add,
                    compare: 0,
                });
                psns_used = 1;
                self.req.send_index += 1;
            }
            _ => {
                let n = (wqe.length - offset).min(mtu);
                let first = offset == 0;
                let last = offset + n == wqe.length;
                payload_len = n;
                if self.qp_type == QpType::Ud {
                    let opcode = match op {
                        SendOp::SendWithImm(_) => OpCode::UdSendOnlyImm,
                        _ => OpCode::UdSendOnly,
                    };
                    let ud = wqe.wr.ud?;
                    let mut bth = self.bth(opcode, psn, self.gsi);
                    bth.dest_qp = ud.qpn;
                    repr = packet::Repr::new(bth);
                    // High bit set: use the QP's own Q_Key (ibverbs rule).
                    let qkey = if ud.qkey & 0x8000_0000 != 0 {
                        self.attr.qkey.unwrap_or(0)
                    } else {
                        ud.qkey
                    };
                    repr.deth = Some(deth::Repr {
                        qkey,
                        src_qp: self.qpn,
                    });
                } else {
                    let ack_req = self.qp_type == QpType::Rc
                        && (last || self.req.since_ack_req + 1 >= MAX_PACKETS_PER_ACK);
                    repr = packet::Repr::new(self.bth(
                        send_opcode(self.qp_type, op, first, last),
                        psn,
                        ack_req,
                    ));
                }
                repr.bth.solicited = last && wqe.wr.solicited;
                match op {
                    SendOp::RdmaWrite { remote_addr, rkey }
                    | SendOp::RdmaWriteWithImm {
                        remote_addr, rkey, ..
                    } if first => {
                        repr.reth = Some(reth::Repr {
                            virtual_address: remote_addr,
                            rkey,
                            dma_length: wqe.length,
                        });
                    }
                    _ => {}
                }
                if last {
                    match op {
                        SendOp::SendWithImm(value)
                        | SendOp::RdmaWriteWithImm { imm: value, .. } => {
                            repr.imm = Some(imm::Repr { imm: value });
                        }
                        SendOp::SendWithInv(rkey) => repr.ieth = Some(ieth::Repr { rkey }),
                        _ => {}
                    }
                }
                psns_used = 1;
                if last {
                    self.req.send_index += 1;
                    self.req.send_offset = 0;
                    finished = self.qp_type != QpType::Rc;
                } else {
                    self.req.send_offset = offset + n;
                }
            }
        }
        let lent = self.lend(&self.sq[index], offset, payload_len as usize, ctx);
        let out = match lent {
            Some(lent) => Outgoing::lent(repr, lent, src, dst, ctx.buffers),
            None => {
                let mut out = Outgoing::new(repr, payload_len as usize, src, dst, ctx.buffers);
                if payload_len > 0
                    && self
                        .gather(&self.sq[index], offset, out.payload_mut(), &*ctx.memory)
                        .is_err()
                {
                    self.fail_send(WcStatus::LocProtErr, vendor_err::LOCAL_KEY, ctx);
                    return None;
                }
                out
            }
        };
        if repr.bth.ack_req {
            self.req.since_ack_req = 0;
        } else {
            self.req.since_ack_req += 1;
        }
        let resent = psn.is_before(self.req.send_high);
        if self.qp_type != QpType::Ud && resent {
            ctx.counters.retransmits += 1;
            tracing::trace!(ns = %ctx.ns, qpn = %self.qpn, %psn, "retransmit");
        }
        self.req.next_psn = psn.add(psns_used);
        if self.req.next_psn.is_after(self.req.send_high) {
            self.req.send_high = self.req.next_psn;
        }
        if self.qp_type == QpType::Rc {
            if repr.bth.ack_req || resent {
                self.req.timer.sent(psn, ctx.now, resent);
            }
            let limit = self.ack_timeout();
            self.req.timer.arm(ctx.now, limit);
        } else {
            self.req.comp_psn = self.req.next_psn;
        }
        if finished {
            // UC and UD sends complete once their last packet is out.
            self.sq[index].done = true;
        }
        Some(out)
    }

    /// Source and destination of the WR at `index`.
    fn addresses(
        &self,
        index: usize,
        ctx: &Context<'_>,
    ) -> Option<(std::net::IpAddr, std::net::IpAddr)> {
        if self.qp_type == QpType::Ud {
            let dst = self.sq.get(index)?.wr.ud?.address;
            let src = ctx
                .gids
                .iter()
                .copied()
                .find(|g| g.is_ipv4() == dst.is_ipv4())?;
            Some((src, dst))
        } else {
            Some((self.local?, self.attr.av?.remote))
        }
    }

    /// The retransmit or RNR timer fired.
    pub(crate) fn handle_timeout(&mut self, ctx: &mut Context<'_>) {
        if self.req.rnr_until.is_some_and(|t| t <= ctx.now) {
            self.req.rnr_until = None;
            tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, from = %self.req.comp_psn, "RNR wait over; resending");
            self.go_back();
        }
        if let Some(expiry) = self.req.timer.expire(ctx.now) {
            let outstanding = self.sq.iter().any(|w| w.started && !w.done);
            if !outstanding || self.state == QpState::Err {
                return;
            }
            ctx.counters.timeouts += 1;
            tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, from = %self.req.comp_psn, retry_left = self.req.retry_left, ?expiry, srtt = ?self.req.timer.srtt(), "retransmit timeout");
            if expiry == Expiry::Retry {
                if self.req.retry_left == 0 {
                    self.fail_send(WcStatus::RetryExcErr, vendor_err::RETRY_EXHAUSTED, ctx);
                    return;
                }
                if self.attr.retry_cnt != Some(timer::RETRY_INFINITE) {
                    self.req.retry_left -= 1;
                }
            }
            self.req.retrying_from = Some(self.req.comp_psn);
            self.req.shrink_window();
            self.go_back();
        }
    }
}
