//! The responder: PSN checks, duplicate handling with the responder-resource ring
//! (READ responses replayed, atomic results resent, never re-executed), NAKs, and
//! coalesced ACKs carrying the MSN.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use ferroce_wire::opcode::Operation;
use ferroce_wire::packet::Parsed;
use ferroce_wire::{
    aeth, atomic, bth, packet, AckSyndrome, NakCode, OpCode, Position, Psn, Qpn, Rkey,
};

use super::super::cq::{WcOpcode, WcStatus, WorkCompletion};
use super::super::memory::{AccessError, AccessFlags, AtomicOp, Key};
use super::super::trace::count_drop;
use super::super::{AsyncEvent, DatagramMeta, Time};
use super::requester::packets_for;
use super::{sg_capacity, Context, Outgoing, QpState, QpType, QueuePair, RecvWr, LEND_MIN};

/// The longest message IBA allows (2^31 bytes).
pub const MAX_MESSAGE: u32 = 1 << 31;

/// Length of the GRH space at the start of a UD receive buffer.
pub const GRH_LEN: usize = 40;

/// ACKs and NAKs queued at most before each new one replaces the last (which it
/// acknowledges past): a requester has at most this many PSNs unacknowledged
/// ([`MAX_UNACKED_PSNS`](super::requester::MAX_UNACKED_PSNS)), so more could only come
/// from a peer flooding faster than the engine sends.
pub const MAX_QUEUED_ACKS: usize = 256;

/// A message being received across several packets.
#[derive(Debug)]
enum InProgress {
    Send {
        recv: RecvWr,
        from_srq: bool,
        offset: u32,
    },
    Write {
        va: u64,
        rkey: Rkey,
        remaining: u32,
        total: u32,
    },
}

/// A responder resource: what a READ or atomic needs to be answered again.
#[derive(Debug, Clone, Copy)]
enum Resource {
    Read {
        first_psn: Psn,
        last_psn: Psn,
        va: u64,
        rkey: Rkey,
        length: u32,
    },
    Atomic {
        psn: Psn,
        original: u64,
    },
}

/// Something the responder must send, in PSN order.
///
/// Bounded: every READ or atomic job answers a resource in the responder-resource ring
/// (`max_dest_rd_atomic` entries), one job per resource; ACKs and NAKs beyond
/// [`MAX_QUEUED_ACKS`] fold into the last one.
#[derive(Debug, Clone, Copy)]
enum Job {
    Ack {
        psn: Psn,
        syndrome: AckSyndrome,
        msn: u32,
    },
    /// READ responses, built one packet at a time from the region as they are sent.
    Read {
        psn: Psn,
        va: u64,
        rkey: Rkey,
        remaining: u32,
        first: bool,
        msn: u32,
        /// Answers a duplicate request (not counted against `max_dest_rd_atomic`).
        replay: bool,
    },
    Atomic {
        psn: Psn,
        original: u64,
        msn: u32,
        replay: bool,
    },
}

impl Job {
    /// The PSN of the next packet this job sends.
    fn psn(&self) -> Psn {
        match *self {
            Job::Ack { psn, .. } | Job::Read { psn, .. } | Job::Atomic { psn, .. } => psn,
        }
    }

    /// An ACK or a NAK that a later one may stand for (plain ACK, PSN sequence error,
    /// RNR): each acknowledges every PSN before its own. Fatal NAKs stay.
    fn is_foldable_ack(&self) -> bool {
        let Job::Ack { syndrome, .. } = self else {
            return false;
        };
        matches!(
            syndrome,
            AckSyndrome::Ack { .. }
                | AckSyndrome::Nak(NakCode::PsnSequenceError)
                | AckSyndrome::RnrNak { .. }
        )
    }

    /// A READ or atomic being answered for the first time.
    fn is_fresh_read_or_atomic(&self) -> bool {
        matches!(
            self,
            Job::Read { replay: false, .. } | Job::Atomic { replay: false, .. }
        )
    }

    /// True when this job answers `resource`.
    fn answers(&self, resource: &Resource) -> bool {
        match (*self, *resource) {
            (
                Job::Read { psn, .. },
                Resource::Read {
                    first_psn,
                    last_psn,
                    ..
                },
            ) => !psn.is_before(first_psn) && !psn.is_after(last_psn),
            (Job::Atomic { psn, .. }, Resource::Atomic { psn: p, .. }) => psn == p,
            _ => false,
        }
    }
}

/// Responder state of a QP.
#[derive(Debug, Default)]
pub(crate) struct Responder {
    /// Expected PSN.
    pub epsn: Psn,
    /// Messages completed (24 bits on the wire).
    msn: u32,
    /// A PSN-sequence or RNR NAK was sent for the current gap: send no more.
    nak_sent: bool,
    /// UC: the rest of the current message is dropped.
    uc_drop: bool,
    in_progress: Option<InProgress>,
    resources: Vec<Option<Resource>>,
    resource_head: usize,
    jobs: VecDeque<Job>,
    /// A plain ACK alone in `jobs` is held back until then (see `ack_delay`).
    ack_hold: Option<Time>,
}

/// How a request failed: class A/C errors of IBA 9.9.3 NAK it; a failed invalidation
/// (`nak: None`, rxe's class J) is acknowledged as if it had worked, and only the
/// responder's receive completion and QP state say it did not.
struct Refusal {
    nak: Option<NakCode>,
    recv_status: WcStatus,
}

/// The affiliated async error of a responder's class C error (IBA 11.6.3.1): invalid
/// request and access violation have events of their own, the rest is fatal.
fn error_event(nak: NakCode, qpn: Qpn) -> AsyncEvent {
    match nak {
        NakCode::InvalidRequest => AsyncEvent::QpReqErr(qpn),
        NakCode::RemoteAccessError => AsyncEvent::QpAccessErr(qpn),
        _ => AsyncEvent::QpFatal(qpn),
    }
}

fn refuse(nak: NakCode, recv_status: WcStatus) -> Refusal {
    Refusal {
        nak: Some(nak),
        recv_status,
    }
}

impl Responder {
    /// Size of the responder-resource ring.
    pub fn resources_len(&self) -> usize {
        self.resources.len()
    }

    /// The most jobs [`Responder::queued`] may count (what `QpInfo::responses_queued`
    /// promises): one READ/atomic job per ring entry and [`MAX_QUEUED_ACKS`] ACKs and
    /// NAKs (past it `queue_ack` folds or drops them), with one ring's worth of slack
    /// for the fatal NAKs that are never folded (the first moves the QP to ERR).
    pub fn queue_bound(&self) -> usize {
        MAX_QUEUED_ACKS + 2 * self.resources.len()
    }

    pub fn resize_resources(&mut self, n: usize) {
        self.resources = vec![None; n];
        self.resource_head = 0;
    }

    pub fn take_in_progress_recv(&mut self) -> Option<RecvWr> {
        match self.in_progress.take() {
            Some(InProgress::Send { recv, .. }) => Some(recv),
            _ => None,
        }
    }

    pub fn keep_only_naks(&mut self) {
        self.jobs
            .retain(|j| matches!(j, Job::Ack { syndrome, .. } if !syndrome.is_ack()));
    }

    /// When a held ACK is due, if one is held.
    pub fn ack_due(&self) -> Option<Time> {
        self.ack_hold.filter(|_| !self.jobs.is_empty())
    }

    /// Lets a held ACK go at the next `poll_response`.
    pub fn release_ack(&mut self, now: Time) {
        if let Some(hold) = &mut self.ack_hold {
            *hold = (*hold).min(now);
        }
    }

    /// Holds the ACK just queued for `delay` (unless one is already held: the first
    /// sets the deadline, so no ACK waits longer than `delay`).
    fn hold_ack(&mut self, now: Time, delay: Duration) {
        if !delay.is_zero() && self.ack_hold.is_none() {
            self.ack_hold = Some(now + delay);
        }
    }

    /// Queues an ACK. Without `coalesce` every AckReq packet gets its own ACK, as rxe
    /// sends them; with it (re-ACKs of duplicates, held ACKs) a plain ACK queued last
    /// is moved forward instead: an ACK acknowledges every PSN before it.
    fn push_ack(&mut self, psn: Psn, coalesce: bool) {
        let msn = self.msn;
        if let Some(Job::Ack {
            psn: p,
            syndrome,
            msn: m,
        }) = self.jobs.back_mut()
        {
            if coalesce && syndrome.is_ack() {
                if psn.is_after(*p) {
                    *p = psn;
                    *m = msn;
                }
                return;
            }
        }
        let syndrome = AckSyndrome::Ack {
            credits: aeth::CREDITS_INVALID,
        };
        self.queue_ack(Job::Ack { psn, syndrome, msn });
    }

    fn push_nak(&mut self, psn: Psn, syndrome: AckSyndrome) {
        let msn = self.msn;
        self.queue_ack(Job::Ack { psn, syndrome, msn });
    }

    /// Queues an ACK or NAK; past [`MAX_QUEUED_ACKS`] a foldable one replaces the
    /// foldable one queued last (or is dropped if that one is already further on), and
    /// is dropped when the last job is a READ/atomic answer: an ACK must not overtake
    /// the answer to a request before it, and ACKs are cumulative, so a dropped one
    /// costs at most the requester's retransmit timer — only a peer that floods past
    /// every answer gets there.
    fn queue_ack(&mut self, ack: Job) {
        if self.jobs.len() >= MAX_QUEUED_ACKS && ack.is_foldable_ack() {
            if let Some(last) = self.jobs.back_mut().filter(|j| j.is_foldable_ack()) {
                if !ack.psn().is_before(last.psn()) {
                    *last = ack;
                }
            }
            return;
        }
        self.jobs.push_back(ack);
    }

    /// READ and atomic jobs answering requests for the first time: the requester has at
    /// least these outstanding, and may have `max_dest_rd_atomic` at most.
    fn fresh_reads_and_atomics(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| j.is_fresh_read_or_atomic())
            .count()
    }

    fn store_resource(&mut self, resource: Resource) {
        if self.resources.is_empty() {
            return;
        }
        // The oldest entry is overwritten, as in rxe; a replay of it still queued goes
        // with it (its requester has moved on), so every READ/atomic job answers an
        // entry of the ring.
        if let Some(old) = self.resources[self.resource_head].replace(resource) {
            self.jobs.retain(|job| !job.answers(&old));
        }
        self.resource_head = (self.resource_head + 1) % self.resources.len();
    }

    /// READ/atomic responses and ACKs waiting to be sent.
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }

    /// Queues `replay`, a duplicate READ's answer, for the READ whose PSNs are
    /// `first..=last`. Like rxe, which resets the responder resource, a stream of that
    /// READ still queued or being sent is replaced, not followed by a second one: the
    /// requester drops everything after a gap, so the old stream is wasted and every
    /// further loss would add one more replay of the remainder. The replay takes the old
    /// stream's place when only answers to later requests follow it; when answers to
    /// earlier requests (replayed since) follow it, it goes to the back so responses
    /// still go out in the order the requester asked for them.
    fn queue_read_replay(&mut self, first: Psn, last: Psn, replay: Job) {
        let in_read = |psn: Psn| !psn.is_before(first) && !psn.is_after(last);
        let same_read = |job: &Job| matches!(*job, Job::Read { psn, .. } if in_read(psn));
        if let Some(index) = self.jobs.iter().position(same_read) {
            let only_later_behind = self
                .jobs
                .iter()
                .skip(index + 1)
                .all(|job| job.psn().is_after(last));
            if only_later_behind {
                self.jobs[index] = replay;
                return;
            }
            self.jobs.remove(index);
        }
        self.jobs.push_back(replay);
    }

    fn complete_message(&mut self) {
        self.msn = (self.msn + 1) & 0x00ff_ffff;
    }
}

impl QueuePair {
    /// A request packet (SEND, WRITE, READ request, atomic) arrived.
    pub(crate) fn handle_request(
        &mut self,
        meta: &DatagramMeta,
        parsed: &Parsed<'_>,
        ctx: &mut Context<'_>,
    ) {
        if !matches!(
            self.state,
            QpState::Rtr | QpState::Rts | QpState::Sqd | QpState::Sqe
        ) {
            count_drop!(ctx.counters, wrong_state, ns = %ctx.ns, qpn = %self.qpn);
            return;
        }
        match self.qp_type {
            QpType::Ud => self.handle_ud(meta, parsed, ctx),
            QpType::Rc | QpType::Uc => self.handle_connected(parsed, ctx),
        }
    }

    fn handle_connected(&mut self, parsed: &Parsed<'_>, ctx: &mut Context<'_>) {
        let Ok(info) = parsed.repr.info() else {
            return;
        };
        let psn = parsed.repr.bth.psn;
        let rc = self.qp_type == QpType::Rc;
        if rc {
            let d = psn.diff(self.resp.epsn);
            if d > 0 {
                count_drop!(ctx.counters, out_of_sequence, ns = %ctx.ns, qpn = %self.qpn);
                if !self.resp.nak_sent {
                    self.resp.nak_sent = true;
                    let epsn = self.resp.epsn;
                    self.resp
                        .push_nak(epsn, AckSyndrome::Nak(NakCode::PsnSequenceError));
                    ctx.counters.naks_sent.psn_sequence += 1;
                    tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, %psn, %epsn, syndrome = ?AckSyndrome::Nak(NakCode::PsnSequenceError), "NAK sent");
                }
                return;
            }
            if d < 0 {
                ctx.counters.duplicates += 1;
                tracing::trace!(ns = %ctx.ns, qpn = %self.qpn, %psn, "duplicate request");
                self.handle_duplicate(parsed, info.operation, ctx);
                return;
            }
            self.resp.nak_sent = false;
        } else if psn != self.resp.epsn || self.resp.uc_drop {
            // UC: a gap loses the message in progress; a new one may start anywhere.
            if info.position.starts_message() {
                self.abort_uc_message(ctx);
                self.resp.uc_drop = false;
            } else {
                count_drop!(ctx.counters, out_of_sequence, ns = %ctx.ns, qpn = %self.qpn);
                self.abort_uc_message(ctx);
                self.resp.uc_drop = true;
                self.resp.epsn = psn.next();
                return;
            }
        }
        match self.execute(parsed, info.operation, info.position, ctx) {
            // The receive completion was lost to a full CQ (class G): the QP went to
            // ERR and, as in rxe, the request is not acknowledged.
            Ok(Some(_)) if self.state == QpState::Err => {}
            Ok(Some(advance)) => {
                self.resp.epsn = psn.add(advance);
                if rc
                    && parsed.repr.bth.ack_req
                    && matches!(info.operation, Operation::Send | Operation::Write)
                {
                    let hold = !self.ack_delay.is_zero();
                    self.resp.push_ack(psn, hold);
                    if hold {
                        self.resp.hold_ack(ctx.now, self.ack_delay);
                    }
                }
            }
            Ok(None) => {}
            Err(refusal) => {
                if let (true, Some(nak)) = (rc, refusal.nak) {
                    self.resp.push_nak(psn, AckSyndrome::Nak(nak));
                    ctx.counters.naks_sent.count(nak);
                    tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, %psn, syndrome = ?AckSyndrome::Nak(nak), "NAK sent");
                    let event = error_event(nak, self.qpn);
                    self.fail_receive(refusal.recv_status, event, ctx);
                } else if rc {
                    // rxe: the receive fails and the QP goes to ERR, but the packet is
                    // ACKed like any other (after the flush, which keeps only NAKs).
                    self.fail_receive(refusal.recv_status, AsyncEvent::QpFatal(self.qpn), ctx);
                    if parsed.repr.bth.ack_req {
                        self.resp.push_ack(psn, false);
                    }
                } else {
                    count_drop!(ctx.counters, refused, ns = %ctx.ns, qpn = %self.qpn);
                    self.abort_uc_message(ctx);
                    self.resp.uc_drop = true;
                    self.resp.epsn = psn.next();
                }
            }
        }
    }

    /// UC: drops the message in progress; its receive WR goes back to be reused.
    fn abort_uc_message(&mut self, ctx: &mut Context<'_>) {
        if let Some(InProgress::Send { recv, from_srq, .. }) = self.resp.in_progress.take() {
            if from_srq {
                if let Some(srq) = self.srq.and_then(|id| ctx.srqs.get_mut(&id)) {
                    srq.queue.push_front(recv);
                }
            } else {
                self.rq.push_front(recv);
            }
        }
    }

    /// RC class A/C error: the receive in progress completes with `status`, the QP
    /// goes to ERR and the rest is flushed.
    fn fail_receive(&mut self, status: WcStatus, event: AsyncEvent, ctx: &mut Context<'_>) {
        if let Some(recv) = self.resp.take_in_progress_recv() {
            let wc = self.recv_completion(&recv, status, WcOpcode::Recv, 0);
            ctx.push_completion(self.recv_cq, wc);
        }
        self.enter_error_raising(event, ctx);
    }

    /// Takes a receive WR from the SRQ or the QP's receive queue.
    fn take_recv(&mut self, ctx: &mut Context<'_>) -> Option<(RecvWr, bool)> {
        match self.srq {
            Some(id) => {
                let srq = ctx.srqs.get_mut(&id)?;
                let (wr, fired) = srq.take()?;
                if fired {
                    ctx.raise(AsyncEvent::SrqLimitReached(id));
                }
                Some((wr, true))
            }
            None => self.rq.pop_front().map(|wr| (wr, false)),
        }
    }

    fn rnr(&mut self, psn: Psn, ctx: &mut Context<'_>) {
        let timer = self.attr.min_rnr_timer.unwrap_or(0);
        if self.qp_type == QpType::Rc {
            self.resp.nak_sent = true;
            self.resp.push_nak(psn, AckSyndrome::RnrNak { timer });
            ctx.counters.naks_sent.rnr += 1;
            tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, %psn, syndrome = ?AckSyndrome::RnrNak { timer }, "NAK sent");
        } else {
            count_drop!(ctx.counters, no_receive_buffer, ns = %ctx.ns, qpn = %self.qpn);
            self.resp.uc_drop = true;
            self.resp.epsn = psn.next();
        }
    }

    /// Runs a request in sequence. `Ok(Some(n))`: done, the expected PSN moves by `n`;
    /// `Ok(None)`: not executed and not an error (RNR).
    fn execute(
        &mut self,
        parsed: &Parsed<'_>,
        operation: Operation,
        position: Position,
        ctx: &mut Context<'_>,
    ) -> Result<Option<u32>, Refusal> {
        let psn = parsed.repr.bth.psn;
        let opcode = parsed.repr.bth.opcode;
        let invalid = || refuse(NakCode::InvalidRequest, WcStatus::RemInvReqErr);
        // Opcode sequence: a message in progress continues, or a new one starts.
        let in_send = matches!(self.resp.in_progress, Some(InProgress::Send { .. }));
        let in_write = matches!(self.resp.in_progress, Some(InProgress::Write { .. }));
        let continues = matches!(position, Position::Middle | Position::Last);
        let sequence_ok = match operation {
            Operation::Send => in_send == continues && !in_write,
            Operation::Write => in_write == continues && !in_send,
            _ => !in_send && !in_write,
        };
        if !sequence_ok {
            return Err(invalid());
        }
        let access = self.attr.access.unwrap_or_default();
        let needed = match operation {
            Operation::Write => Some(AccessFlags::REMOTE_WRITE),
            Operation::ReadRequest => Some(AccessFlags::REMOTE_READ),
            Operation::CompareSwap | Operation::FetchAdd => Some(AccessFlags::REMOTE_ATOMIC),
            _ => None,
        };
        if needed.is_some_and(|n| !access.contains(n)) {
            return Err(invalid());
        }
        let mtu = self.path_mtu();
        if parsed.check_segment(mtu as usize).is_err() {
            return Err(invalid());
        }
        match operation {
            Operation::Send => {
                if position.starts_message() {
                    let Some((recv, from_srq)) = self.take_recv(ctx) else {
                        self.rnr(psn, ctx);
                        return Ok(None);
                    };
                    self.resp.in_progress = Some(InProgress::Send {
                        recv,
                        from_srq,
                        offset: 0,
                    });
                }
                let Some(InProgress::Send { recv, offset, .. }) = &mut self.resp.in_progress else {
                    return Err(invalid());
                };
                let end = u64::from(*offset) + parsed.payload.len() as u64;
                // Messages are at most 2^31 bytes; a peer sending Middles forever stops
                // here even when overlapping SGEs add up to more.
                if end > sg_capacity(&recv.sg_list) || end > u64::from(MAX_MESSAGE) {
                    return Err(refuse(NakCode::InvalidRequest, WcStatus::LocLenErr));
                }
                if Self::scatter(self.pd, &recv.sg_list, *offset, parsed.payload, ctx.memory)
                    .is_err()
                {
                    return Err(refuse(
                        NakCode::RemoteOperationalError,
                        WcStatus::LocProtErr,
                    ));
                }
                *offset = end as u32;
                if position.ends_message() {
                    let mut invalidated = None;
                    if let Some(ieth) = parsed.repr.ieth {
                        // Only fast-registered regions and memory windows can be
                        // invalidated (none here): rxe's class J error.
                        if ctx
                            .memory
                            .invalidate(Key::Remote(ieth.rkey), self.pd)
                            .is_err()
                        {
                            return Err(Refusal {
                                nak: None,
                                recv_status: WcStatus::RemInvReqErr,
                            });
                        }
                        invalidated = Some(ieth.rkey);
                    }
                    let Some(InProgress::Send { recv, offset, .. }) = self.resp.in_progress.take()
                    else {
                        return Err(invalid());
                    };
                    let mut wc =
                        self.recv_completion(&recv, WcStatus::Success, WcOpcode::Recv, offset);
                    wc.imm_data = parsed.repr.imm.map(|i| i.imm);
                    wc.invalidated_rkey = invalidated;
                    let solicited = parsed.repr.bth.solicited;
                    self.complete_receive(wc, solicited, ctx);
                    self.resp.complete_message();
                }
                Ok(Some(1))
            }
            Operation::Write => {
                let with_imm = matches!(
                    opcode,
                    OpCode::RcWriteLastImm
                        | OpCode::RcWriteOnlyImm
                        | OpCode::UcWriteLastImm
                        | OpCode::UcWriteOnlyImm
                );
                // The receive WR an immediate consumes is checked first: no buffer is RNR.
                let recv = if with_imm {
                    match self.take_recv(ctx) {
                        Some(r) => Some(r),
                        None => {
                            self.rnr(psn, ctx);
                            return Ok(None);
                        }
                    }
                } else {
                    None
                };
                let result = self.execute_write(parsed, position, ctx);
                match (result, recv) {
                    (Err(e), Some((recv, from_srq))) => {
                        // Give the receive back; it was not used.
                        if from_srq {
                            if let Some(srq) = self.srq.and_then(|id| ctx.srqs.get_mut(&id)) {
                                srq.queue.push_front(recv);
                            }
                        } else {
                            self.rq.push_front(recv);
                        }
                        Err(e)
                    }
                    (Err(e), None) => Err(e),
                    (Ok(total), recv) => {
                        if let (Some(total), Some((recv, _))) = (total, recv) {
                            let mut wc = self.recv_completion(
                                &recv,
                                WcStatus::Success,
                                WcOpcode::RecvRdmaWithImm,
                                total,
                            );
                            wc.imm_data = parsed.repr.imm.map(|i| i.imm);
                            let solicited = parsed.repr.bth.solicited;
                            self.complete_receive(wc, solicited, ctx);
                        }
                        Ok(Some(1))
                    }
                }
            }
            Operation::ReadRequest => {
                if self.exceeds_responder_resources() {
                    return Err(invalid());
                }
                let reth = parsed.repr.reth.ok_or_else(invalid)?;
                if reth.dma_length > MAX_MESSAGE {
                    return Err(invalid());
                }
                if reth.dma_length > 0 {
                    ctx.memory
                        .check(
                            Key::Remote(reth.rkey),
                            self.pd,
                            reth.virtual_address,
                            u64::from(reth.dma_length),
                            AccessFlags::REMOTE_READ,
                        )
                        .map_err(|_| refuse(NakCode::RemoteAccessError, WcStatus::RemAccessErr))?;
                }
                let psns = packets_for(reth.dma_length, mtu);
                self.resp.store_resource(Resource::Read {
                    first_psn: psn,
                    last_psn: psn.add(psns - 1),
                    va: reth.virtual_address,
                    rkey: reth.rkey,
                    length: reth.dma_length,
                });
                self.resp.complete_message();
                let msn = self.resp.msn;
                self.resp.jobs.push_back(Job::Read {
                    psn,
                    va: reth.virtual_address,
                    rkey: reth.rkey,
                    remaining: reth.dma_length,
                    first: true,
                    msn,
                    replay: false,
                });
                Ok(Some(psns))
            }
            Operation::CompareSwap | Operation::FetchAdd => {
                if self.exceeds_responder_resources() {
                    return Err(invalid());
                }
                let eth = parsed.repr.atomic_eth.ok_or_else(invalid)?;
                let op = if operation == Operation::CompareSwap {
                    AtomicOp::CompareSwap {
                        compare: eth.compare,
                        swap: eth.swap_add,
                    }
                } else {
                    AtomicOp::FetchAdd { add: eth.swap_add }
                };
                let original = ctx
                    .memory
                    .atomic(eth.rkey, self.pd, eth.virtual_address, op)
                    .map_err(|e| match e {
                        AccessError::Misaligned => invalid(),
                        _ => refuse(NakCode::RemoteAccessError, WcStatus::RemAccessErr),
                    })?;
                self.resp.store_resource(Resource::Atomic { psn, original });
                self.resp.complete_message();
                let msn = self.resp.msn;
                self.resp.jobs.push_back(Job::Atomic {
                    psn,
                    original,
                    msn,
                    replay: false,
                });
                Ok(Some(1))
            }
            _ => Err(invalid()),
        }
    }

    /// True when a new READ or atomic would exceed `max_dest_rd_atomic`: more answers
    /// still to send than the responder resources the requester was granted, which a
    /// requester within its `max_rd_atomic` never causes. Refused as rxe refuses one
    /// when it has no resources at all (`RESPST_ERR_TOO_MANY_RDMA_ATM_REQ`: NAK invalid
    /// request, class C). rxe itself answers each READ whole before it takes the next
    /// packet, so it never holds more than one.
    fn exceeds_responder_resources(&self) -> bool {
        self.resp.fresh_reads_and_atomics() >= self.resp.resources.len()
    }

    /// One WRITE packet; returns the message length when it was the last packet.
    fn execute_write(
        &mut self,
        parsed: &Parsed<'_>,
        position: Position,
        ctx: &mut Context<'_>,
    ) -> Result<Option<u32>, Refusal> {
        let access_error = || refuse(NakCode::RemoteAccessError, WcStatus::RemAccessErr);
        let invalid = || refuse(NakCode::InvalidRequest, WcStatus::RemInvReqErr);
        if position.starts_message() {
            let reth = parsed.repr.reth.ok_or_else(invalid)?;
            if reth.dma_length > MAX_MESSAGE {
                return Err(invalid());
            }
            if reth.dma_length > 0 {
                ctx.memory
                    .check(
                        Key::Remote(reth.rkey),
                        self.pd,
                        reth.virtual_address,
                        u64::from(reth.dma_length),
                        AccessFlags::REMOTE_WRITE,
                    )
                    .map_err(|_| access_error())?;
            }
            self.resp.in_progress = Some(InProgress::Write {
                va: reth.virtual_address,
                rkey: reth.rkey,
                remaining: reth.dma_length,
                total: reth.dma_length,
            });
        }
        let Some(InProgress::Write {
            va,
            rkey,
            remaining,
            total,
        }) = &mut self.resp.in_progress
        else {
            return Err(invalid());
        };
        let n = parsed.payload.len() as u32;
        if n > *remaining || (position.ends_message() && n != *remaining) {
            return Err(invalid());
        }
        if n > 0 {
            ctx.memory
                .write(
                    Key::Remote(*rkey),
                    self.pd,
                    *va,
                    parsed.payload,
                    AccessFlags::REMOTE_WRITE,
                )
                .map_err(|_| access_error())?;
        }
        *va += u64::from(n);
        *remaining -= n;
        let total = *total;
        if position.ends_message() {
            self.resp.in_progress = None;
            self.resp.complete_message();
            return Ok(Some(total));
        }
        Ok(None)
    }

    /// A request with a PSN already executed: re-ACK, replay a READ, resend an atomic's
    /// saved result. Nothing is executed twice.
    fn handle_duplicate(
        &mut self,
        parsed: &Parsed<'_>,
        operation: Operation,
        ctx: &mut Context<'_>,
    ) {
        let psn = parsed.repr.bth.psn;
        match operation {
            Operation::Send | Operation::Write => {
                let last = self.resp.epsn.sub(1);
                self.resp.push_ack(last, true);
            }
            Operation::ReadRequest => {
                let Some(reth) = parsed.repr.reth else {
                    return;
                };
                let found = self.resp.resources.iter().flatten().find_map(|r| match *r {
                    Resource::Read {
                        first_psn,
                        last_psn,
                        va,
                        rkey,
                        length,
                    } if !psn.is_before(first_psn) && !psn.is_after(last_psn) => {
                        Some((first_psn, last_psn, va, rkey, length))
                    }
                    _ => None,
                });
                let Some((first_psn, last_psn, va, rkey, length)) = found else {
                    count_drop!(ctx.counters, duplicate_not_replayed, ns = %ctx.ns, qpn = %self.qpn);
                    return;
                };
                let end = reth.virtual_address.checked_add(u64::from(reth.dma_length));
                let inside = reth.rkey == rkey
                    && reth.virtual_address >= va
                    && end.is_some_and(|e| e <= va + u64::from(length));
                if !inside {
                    count_drop!(ctx.counters, duplicate_not_replayed, ns = %ctx.ns, qpn = %self.qpn);
                    return;
                }
                let replay = Job::Read {
                    psn,
                    va: reth.virtual_address,
                    rkey,
                    remaining: reth.dma_length,
                    first: true,
                    msn: self.resp.msn,
                    replay: true,
                };
                self.resp.queue_read_replay(first_psn, last_psn, replay);
            }
            Operation::CompareSwap | Operation::FetchAdd => {
                let found = self.resp.resources.iter().flatten().find_map(|r| match *r {
                    Resource::Atomic { psn: p, original } if p == psn => Some(original),
                    _ => None,
                });
                let queued = |job: &Job| matches!(*job, Job::Atomic { psn: p, .. } if p == psn);
                match found {
                    // The saved result is on its way already: one answer is enough.
                    Some(_) if self.resp.jobs.iter().any(queued) => {}
                    Some(original) => {
                        let msn = self.resp.msn;
                        self.resp.jobs.push_back(Job::Atomic {
                            psn,
                            original,
                            msn,
                            replay: true,
                        });
                    }
                    None => {
                        count_drop!(ctx.counters, duplicate_not_replayed, ns = %ctx.ns, qpn = %self.qpn)
                    }
                }
            }
            _ => {}
        }
    }

    fn response_bth(&self, opcode: OpCode, psn: Psn) -> bth::Repr {
        bth::Repr {
            opcode,
            solicited: false,
            migreq: false,
            pad_count: 0,
            pkey: bth::DEFAULT_PKEY,
            fecn: false,
            becn: false,
            dest_qp: self.attr.dest_qpn.unwrap_or_default(),
            ack_req: false,
            psn,
        }
    }

    /// The next response packet (ACK/NAK, READ response, atomic ACK), in order.
    pub(crate) fn poll_response(&mut self, ctx: &mut Context<'_>) -> Option<Outgoing> {
        if self.qp_type != QpType::Rc || self.state == QpState::Reset {
            return None;
        }
        let src = self.local?;
        let dst = self.attr.av?.remote;
        // A held plain ACK with nothing queued behind it waits (see `ack_delay`).
        let held = self.resp.ack_hold.is_some_and(|hold| ctx.now < hold)
            && self.resp.jobs.len() == 1
            && matches!(self.resp.jobs.front(), Some(Job::Ack { syndrome, .. }) if syndrome.is_ack());
        if held {
            return None;
        }
        let job = self.resp.jobs.pop_front()?;
        if matches!(job, Job::Ack { .. }) {
            self.resp.ack_hold = None;
        }
        let mtu = self.path_mtu();
        let mut read_from = None;
        let repr = match job {
            Job::Ack { psn, syndrome, msn } => {
                let mut repr = packet::Repr::new(self.response_bth(OpCode::RcAcknowledge, psn));
                repr.aeth = Some(aeth::Repr { syndrome, msn });
                repr
            }
            Job::Atomic {
                psn, original, msn, ..
            } => {
                let mut repr =
                    packet::Repr::new(self.response_bth(OpCode::RcAtomicAcknowledge, psn));
                repr.aeth = Some(aeth::Repr {
                    syndrome: AckSyndrome::Ack {
                        credits: aeth::CREDITS_INVALID,
                    },
                    msn,
                });
                repr.atomic_ack_eth = Some(atomic::ack::Repr { original });
                repr
            }
            Job::Read {
                psn,
                va,
                rkey,
                remaining,
                first,
                msn,
                replay,
            } => {
                if self.state == QpState::Err {
                    return None;
                }
                let n = remaining.min(mtu);
                let last = n == remaining;
                read_from = Some((rkey, va, n as usize, psn, msn));
                let opcode = match (first, last) {
                    (true, true) => OpCode::RcReadResponseOnly,
                    (true, false) => OpCode::RcReadResponseFirst,
                    (false, true) => OpCode::RcReadResponseLast,
                    (false, false) => OpCode::RcReadResponseMiddle,
                };
                let mut repr = packet::Repr::new(self.response_bth(opcode, psn));
                if first || last {
                    repr.aeth = Some(aeth::Repr {
                        syndrome: AckSyndrome::Ack {
                            credits: aeth::CREDITS_INVALID,
                        },
                        msn,
                    });
                }
                if !last {
                    self.resp.jobs.push_front(Job::Read {
                        psn: psn.next(),
                        va: va + u64::from(n),
                        rkey,
                        remaining: remaining - n,
                        first: false,
                        msn,
                        replay,
                    });
                }
                repr
            }
        };
        let Some((rkey, va, n, psn, msn)) = read_from else {
            return Some(Outgoing::new(repr, 0, src, dst, ctx.buffers));
        };
        if ctx.lend && n >= LEND_MIN {
            let lent = ctx
                .memory
                .lend(Key::Remote(rkey), self.pd, va, n, AccessFlags::REMOTE_READ);
            // On an error the read below fails the same way and NAKs.
            if let Ok(lent) = lent {
                return Some(Outgoing::lent(repr, lent, src, dst, ctx.buffers));
            }
        }
        let mut out = Outgoing::new(repr, n, src, dst, ctx.buffers);
        let read = ctx.memory.read(
            Key::Remote(rkey),
            self.pd,
            va,
            out.payload_mut(),
            AccessFlags::REMOTE_READ,
        );
        if n > 0 && read.is_err() {
            // The region went away since the request was checked.
            let mut repr = packet::Repr::new(self.response_bth(OpCode::RcAcknowledge, psn));
            repr.aeth = Some(aeth::Repr {
                syndrome: AckSyndrome::Nak(NakCode::RemoteAccessError),
                msn,
            });
            ctx.counters.naks_sent.remote_access += 1;
            tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, %psn, syndrome = ?AckSyndrome::Nak(NakCode::RemoteAccessError), "NAK sent");
            // The rest of this READ is not sent.
            if let Some(Job::Read { psn: next, .. }) = self.resp.jobs.front() {
                if *next == psn.next() {
                    self.resp.jobs.pop_front();
                }
            }
            return Some(Outgoing::new(repr, 0, src, dst, ctx.buffers));
        }
        Some(out)
    }

    /// A UD SEND: Q_Key check, a receive WR with 40 bytes of GRH space, no ACK.
    fn handle_ud(&mut self, meta: &DatagramMeta, parsed: &Parsed<'_>, ctx: &mut Context<'_>) {
        let Some(deth) = parsed.repr.deth else {
            return;
        };
        if deth.qkey != self.attr.qkey.unwrap_or(0) {
            count_drop!(ctx.counters, qkey_mismatch, ns = %ctx.ns, qpn = %self.qpn);
            return;
        }
        // C10-93.1.1: no CI emits a UD message longer than the port MTU; one that
        // arrives anyway is a length error, dropped before it takes a receive (class D).
        if parsed.payload.len() > self.path_mtu_for_ud() as usize {
            count_drop!(ctx.counters, too_long, ns = %ctx.ns, qpn = %self.qpn);
            return;
        }
        let Some((recv, _)) = self.take_recv(ctx) else {
            count_drop!(ctx.counters, no_receive_buffer, ns = %ctx.ns, qpn = %self.qpn);
            return;
        };
        let total = GRH_LEN + parsed.payload.len();
        let mut wc = self.recv_completion(&recv, WcStatus::Success, WcOpcode::Recv, total as u32);
        wc.src_qp = deth.src_qp;
        wc.grh = true;
        wc.imm_data = parsed.repr.imm.map(|i| i.imm);
        let solicited = parsed.repr.bth.solicited;
        if total as u64 > sg_capacity(&recv.sg_list) {
            wc.status = WcStatus::LocLenErr;
            wc.byte_len = 0;
        } else {
            let mut bytes = Vec::with_capacity(total);
            let udp_payload_len =
                packet::buffer_len(&parsed.repr, parsed.payload.len()).unwrap_or(0);
            bytes.extend_from_slice(&grh_bytes(meta, udp_payload_len));
            bytes.extend_from_slice(parsed.payload);
            if Self::scatter(self.pd, &recv.sg_list, 0, &bytes, ctx.memory).is_err() {
                wc.status = WcStatus::LocProtErr;
                wc.byte_len = 0;
            }
        }
        self.complete_receive(wc, solicited, ctx);
    }

    /// Puts a receive completion in the receive CQ; when the CQ is full the QP goes to
    /// ERR (rxe's class G, `RESPST_ERR_CQ_OVERFLOW`), so a peer cannot keep a QP
    /// working for completions no one can see.
    fn complete_receive(&mut self, wc: WorkCompletion, solicited: bool, ctx: &mut Context<'_>) {
        if !ctx.push_completion_solicited(self.recv_cq, wc, solicited) {
            self.enter_error(ctx);
        }
    }
}

/// The 40 bytes rxe puts before a UD payload: for IPv4 the IPv4 header in the last 20
/// bytes (the first 20 are zero), for IPv6 the IPv6 header.
fn grh_bytes(meta: &DatagramMeta, udp_payload_len: usize) -> [u8; GRH_LEN] {
    let mut grh = [0u8; GRH_LEN];
    // rxe copies the received header; ours is rebuilt from what the datagram had.
    let udp_len = 8 + udp_payload_len;
    let ecn = match meta.ecn {
        super::super::Ecn::NotEct => 0,
        super::super::Ecn::Ect1 => 1,
        super::super::Ecn::Ect0 => 2,
        super::super::Ecn::Ce => 3,
    };
    match (meta.src, meta.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let ip = &mut grh[20..];
            ip[0] = 0x45;
            ip[1] = ecn;
            ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
            // The sender's ident and DF when the I/O layer recovered them, else what
            // ferroce itself sends (ident 0, DF).
            let (ident, dont_frag) = meta
                .ipv4_ident
                .map_or((0, true), |r| (r.ident, r.dont_frag));
            ip[4..6].copy_from_slice(&ident.to_be_bytes());
            ip[6] = if dont_frag { 0x40 } else { 0 };
            ip[8] = 64;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let mut sum = 0u32;
            for pair in ip.chunks(2) {
                sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
        (src, dst) => {
            let to_v6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            grh[0] = 0x60 | (ecn >> 4);
            grh[1] = ecn << 4;
            grh[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            grh[6] = 17;
            grh[7] = 64;
            grh[8..24].copy_from_slice(&to_v6(src).octets());
            grh[24..40].copy_from_slice(&to_v6(dst).octets());
        }
    }
    grh
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psn_of_last(responder: &Responder) -> Psn {
        responder.jobs.back().map(Job::psn).unwrap_or_default()
    }

    #[test]
    fn acks_past_the_bound_fold_into_the_last_and_fatal_naks_stay() {
        let mut responder = Responder::default();
        for i in 0..MAX_QUEUED_ACKS as u32 + 100 {
            responder.push_ack(Psn::new(i), false);
        }
        assert_eq!(responder.queued(), MAX_QUEUED_ACKS);
        assert_eq!(
            psn_of_last(&responder),
            Psn::new(MAX_QUEUED_ACKS as u32 + 99)
        );
        // An older one does not move the last back.
        responder.push_nak(Psn::new(5), AckSyndrome::RnrNak { timer: 1 });
        assert_eq!(
            psn_of_last(&responder),
            Psn::new(MAX_QUEUED_ACKS as u32 + 99)
        );
        let last = Psn::new(MAX_QUEUED_ACKS as u32 + 100);
        responder.push_nak(last, AckSyndrome::Nak(NakCode::PsnSequenceError));
        assert_eq!(responder.queued(), MAX_QUEUED_ACKS);
        // A fatal NAK is never folded away, nor folded into: an ACK behind it, past
        // the bound, is dropped (the QP is in error by then).
        responder.push_nak(last, AckSyndrome::Nak(NakCode::RemoteAccessError));
        responder.push_ack(last.next(), false);
        assert_eq!(responder.queued(), MAX_QUEUED_ACKS + 1);
        assert!(matches!(
            responder.jobs.back(),
            Some(Job::Ack {
                syndrome: AckSyndrome::Nak(NakCode::RemoteAccessError),
                ..
            })
        ));
    }

    #[test]
    fn an_overwritten_resource_takes_its_queued_answer_with_it() {
        let mut responder = Responder::default();
        responder.resize_resources(2);
        for p in [10, 11, 12] {
            let psn = Psn::new(p);
            responder.store_resource(Resource::Atomic { psn, original: 0 });
            responder.jobs.push_back(Job::Atomic {
                psn,
                original: 0,
                msn: 0,
                replay: true,
            });
        }
        let left: Vec<_> = responder.jobs.iter().map(Job::psn).collect();
        assert_eq!(left, [Psn::new(11), Psn::new(12)]);
        assert_eq!(responder.fresh_reads_and_atomics(), 0);
    }
}
