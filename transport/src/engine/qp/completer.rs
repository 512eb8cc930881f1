//! The completer: ACKs and NAKs, implied ACKs from READ responses and atomic ACKs,
//! go-back-N from a NAKed PSN, RNR back-off, and in-order completions.

use ferroce_wire::opcode::Operation;
use ferroce_wire::packet::Parsed;
use ferroce_wire::{AckSyndrome, NakCode, Position, Psn};

use super::super::cq::WcStatus;
use super::super::timer;
use super::super::trace::count_drop;
use super::requester::vendor_err;
use super::{Context, QpState, QueuePair};

impl QueuePair {
    /// A response (ACK, NAK, READ response, atomic ACK) arrived for this RC requester.
    pub(crate) fn handle_response(&mut self, parsed: &Parsed<'_>, ctx: &mut Context<'_>) {
        if !matches!(self.state, QpState::Rts | QpState::Sqd) {
            count_drop!(ctx.counters, wrong_state, ns = %ctx.ns, qpn = %self.qpn);
            return;
        }
        let Ok(info) = parsed.repr.info() else {
            return;
        };
        let psn = parsed.repr.bth.psn;
        // Nothing outstanding at or after this PSN: a stale or bogus response.
        if !psn.is_before(self.req.send_high) {
            count_drop!(ctx.counters, unexpected_response, ns = %ctx.ns, qpn = %self.qpn);
            return;
        }
        match info.operation {
            Operation::Acknowledge => {
                let Some(aeth) = parsed.repr.aeth else {
                    return;
                };
                match aeth.syndrome {
                    AckSyndrome::Ack { .. } => self.handle_ack(psn, ctx),
                    AckSyndrome::RnrNak { timer: code } => {
                        if self.req.rnr_nak_psn == Some(psn) {
                            // The same NAK again before the retry went out: a duplicate.
                            count_drop!(ctx.counters, duplicate_response, ns = %ctx.ns, qpn = %self.qpn);
                        } else {
                            ctx.counters.naks_received.rnr += 1;
                            tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, %psn, syndrome = ?aeth.syndrome, "NAK received");
                            self.handle_rnr(psn, code, ctx);
                        }
                    }
                    AckSyndrome::Nak(code) => {
                        ctx.counters.naks_received.count(code);
                        tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, %psn, syndrome = ?aeth.syndrome, "NAK received");
                        self.handle_nak(psn, code, ctx);
                    }
                }
            }
            Operation::ReadResponse => self.handle_read_response(parsed, info.position, ctx),
            Operation::AtomicAcknowledge => {
                let Some(ack) = parsed.repr.atomic_ack_eth else {
                    return;
                };
                self.handle_atomic_ack(psn, ack.original, ctx);
            }
            _ => {}
        }
        self.after_progress(ctx);
    }

    /// Keeps the requester consistent after the completer moved `comp_psn`.
    fn after_progress(&mut self, ctx: &mut Context<'_>) {
        self.complete_front(ctx);
        if self.state == QpState::Err {
            return;
        }
        if self.req.next_psn.is_before(self.req.comp_psn) {
            // A late ACK covered what go-back-N was about to resend: skip ahead.
            self.go_back();
        }
        let outstanding = self.sq.iter().any(|w| w.started && !w.done);
        if !outstanding {
            self.req.timer.stop();
        }
    }

    fn progress(&mut self, ctx: &Context<'_>) {
        self.reset_retry_counters();
        self.req.widen_window();
        self.req.retrying_from = None;
        let outstanding = self.sq.iter().any(|w| w.started && !w.done);
        let limit = self.ack_timeout();
        self.req
            .timer
            .progress(ctx.now, self.req.comp_psn, outstanding, limit);
    }

    fn advance_comp(&mut self, psn: Psn) {
        if psn.is_after(self.req.comp_psn) {
            self.req.comp_psn = psn;
        }
    }

    /// Completes SEND/WRITE WRs that end before `psn` (everything before a NAK or a
    /// response is implicitly acknowledged). Stops at an unfinished READ/atomic that
    /// starts before `psn`: its responses were lost. Returns true in that case.
    fn implied_ack_before(&mut self, psn: Psn) -> bool {
        let mut lost_response = false;
        let mut comp = psn;
        for wqe in self.sq.iter_mut() {
            if !wqe.started || !wqe.first_psn.is_before(psn) {
                break;
            }
            if wqe.done {
                continue;
            }
            if wqe.wr.op.is_read_or_atomic() {
                lost_response = true;
                comp = wqe.first_psn;
                break;
            }
            if wqe.last_psn.is_before(psn) {
                wqe.done = true;
            } else {
                break;
            }
        }
        if lost_response {
            // Keep READ progress already made (comp_psn may be inside the READ).
            if comp.is_after(self.req.comp_psn) {
                self.req.comp_psn = comp;
            }
        } else {
            self.advance_comp(psn);
        }
        lost_response
    }

    fn handle_ack(&mut self, psn: Psn, ctx: &mut Context<'_>) {
        if psn.is_before(self.req.comp_psn.sub(1)) {
            count_drop!(ctx.counters, duplicate_response, ns = %ctx.ns, qpn = %self.qpn);
            return;
        }
        let mut need_retry = false;
        let mut progressed = false;
        for wqe in self.sq.iter_mut() {
            if !wqe.started {
                break;
            }
            if wqe.done {
                continue;
            }
            if psn.is_before(wqe.last_psn) {
                // Part of a multi-packet SEND/WRITE.
                if !wqe.wr.op.is_read_or_atomic() && !psn.is_before(wqe.first_psn) {
                    let next = psn.next();
                    if next.is_after(self.req.comp_psn) {
                        self.req.comp_psn = next;
                        progressed = true;
                    }
                }
                break;
            }
            if wqe.wr.op.is_read_or_atomic() {
                // An ACK past an unanswered READ/atomic: its responses were lost.
                need_retry = psn.is_after(wqe.last_psn);
                break;
            }
            wqe.done = true;
            progressed = true;
            let next = wqe.last_psn.next();
            if next.is_after(self.req.comp_psn) {
                self.req.comp_psn = next;
            }
        }
        if progressed {
            self.progress(ctx);
        }
        if need_retry {
            self.complete_front(ctx);
            self.retry_counted(ctx);
        }
    }

    /// Go-back-N that spends one transport retry (7 = infinite); fails the WR with
    /// `RetryExcErr` when none is left.
    fn retry_counted(&mut self, ctx: &mut Context<'_>) {
        if self.req.retrying_from == Some(self.req.comp_psn) {
            // Already rewound to this PSN: more evidence of the same loss is no news,
            // but it shows the peer still answering what came before the resend (READ
            // responses behind the gap): asking again now, even once the negotiated
            // timeout has passed, would only stack another replay behind them.
            let limit = self.ack_timeout();
            self.req.timer.peer_busy(ctx.now, limit);
            return;
        }
        if self.req.retry_left == 0 {
            self.fail_send(WcStatus::RetryExcErr, vendor_err::RETRY_EXHAUSTED, ctx);
            return;
        }
        if self.attr.retry_cnt != Some(timer::RETRY_INFINITE) {
            self.req.retry_left -= 1;
        }
        tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, from = %self.req.comp_psn, retry_left = self.req.retry_left, "going back to resend");
        self.req.retrying_from = Some(self.req.comp_psn);
        self.req.timer.retry_spent();
        self.req.shrink_window();
        self.go_back();
        self.req.timer.rewound_for_loss(self.req.comp_psn);
    }

    fn handle_rnr(&mut self, psn: Psn, code: u8, ctx: &mut Context<'_>) {
        if psn.is_before(self.req.comp_psn) {
            return;
        }
        self.implied_ack_before(psn);
        self.complete_front(ctx);
        if self.req.rnr_left == 0 {
            self.fail_send(WcStatus::RnrRetryExcErr, vendor_err::RNR_EXHAUSTED, ctx);
            return;
        }
        if self.attr.rnr_retry != Some(timer::RETRY_INFINITE) {
            self.req.rnr_left -= 1;
        }
        self.req.timer.stop();
        self.req.rnr_nak_psn = Some(psn);
        self.req.rnr_until = Some(ctx.now + timer::rnr_timeout(code));
        tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, %psn, wait = ?timer::rnr_timeout(code), rnr_left = self.req.rnr_left, "RNR wait");
        // Stop sending now; resend from the NAKed PSN when the RNR timer ends.
        self.go_back();
    }

    fn handle_nak(&mut self, psn: Psn, code: NakCode, ctx: &mut Context<'_>) {
        if psn.is_before(self.req.comp_psn) {
            return;
        }
        self.implied_ack_before(psn);
        self.complete_front(ctx);
        let status = match code {
            NakCode::PsnSequenceError => {
                self.retry_counted(ctx);
                return;
            }
            NakCode::InvalidRequest => WcStatus::RemInvReqErr,
            NakCode::RemoteAccessError => WcStatus::RemAccessErr,
            NakCode::RemoteOperationalError => WcStatus::RemOpErr,
            NakCode::InvalidRdRequest | NakCode::Reserved(_) => WcStatus::BadRespErr,
        };
        self.fail_send(status, vendor_err::REMOTE_NAK, ctx);
    }

    fn handle_read_response(
        &mut self,
        parsed: &Parsed<'_>,
        position: Position,
        ctx: &mut Context<'_>,
    ) {
        let psn = parsed.repr.bth.psn;
        if psn.is_before(self.req.comp_psn) {
            count_drop!(ctx.counters, duplicate_response, ns = %ctx.ns, qpn = %self.qpn);
            return;
        }
        self.implied_ack_before(psn);
        self.complete_front(ctx);
        let mtu = self.path_mtu();
        let Some(index) = self.sq.iter().position(|w| !w.done) else {
            return;
        };
        let wqe = &self.sq[index];
        let is_read = matches!(wqe.wr.op, super::SendOp::RdmaRead { .. });
        if !wqe.started || !is_read || psn.is_before(wqe.first_psn) || psn.is_after(wqe.last_psn) {
            if self.answers_a_later_read(index, psn) {
                // The tail of the front READ's answer was lost: go back (once; later
                // ones show the peer still answering, see `retry_counted`).
                count_drop!(ctx.counters, out_of_sequence, ns = %ctx.ns, qpn = %self.qpn);
                self.retry_counted(ctx);
            } else {
                count_drop!(ctx.counters, unexpected_response, ns = %ctx.ns, qpn = %self.qpn);
            }
            return;
        }
        if psn != self.req.comp_psn {
            // Earlier responses of this READ were lost.
            count_drop!(ctx.counters, out_of_sequence, ns = %ctx.ns, qpn = %self.qpn);
            self.retry_counted(ctx);
            return;
        }
        let offset = psn.diff(wqe.first_psn) as u64 * u64::from(mtu);
        let len = parsed.payload.len() as u64;
        let last = psn == wqe.last_psn;
        let shape_ok = match position {
            Position::First | Position::Middle => len == u64::from(mtu) && !last,
            Position::Last | Position::Only => last,
        } && offset + len <= u64::from(wqe.length)
            && (!last || offset + len == u64::from(wqe.length));
        if !shape_ok {
            self.fail_send(WcStatus::BadRespErr, vendor_err::BAD_RESPONSE, ctx);
            return;
        }
        let scattered = Self::scatter(
            self.pd,
            &wqe.wr.sg_list,
            offset as u32,
            parsed.payload,
            ctx.memory,
        );
        if scattered.is_err() {
            self.fail_send(WcStatus::LocProtErr, vendor_err::LOCAL_KEY, ctx);
            return;
        }
        self.req.comp_psn = psn.next();
        if last {
            self.sq[index].done = true;
        }
        self.progress(ctx);
    }

    /// Whether `psn` falls in the answer of a READ sent after the one at `front`.
    fn answers_a_later_read(&self, front: usize, psn: Psn) -> bool {
        self.sq
            .iter()
            .skip(front + 1)
            .take_while(|w| w.started)
            .any(|w| {
                matches!(w.wr.op, super::SendOp::RdmaRead { .. })
                    && !psn.is_before(w.first_psn)
                    && !psn.is_after(w.last_psn)
            })
    }

    fn handle_atomic_ack(&mut self, psn: Psn, original: u64, ctx: &mut Context<'_>) {
        if psn.is_before(self.req.comp_psn) {
            count_drop!(ctx.counters, duplicate_response, ns = %ctx.ns, qpn = %self.qpn);
            return;
        }
        self.implied_ack_before(psn);
        self.complete_front(ctx);
        let Some(index) = self.sq.iter().position(|w| !w.done) else {
            return;
        };
        let wqe = &self.sq[index];
        if !wqe.started || !wqe.wr.op.is_atomic() || wqe.first_psn != psn {
            count_drop!(ctx.counters, unexpected_response, ns = %ctx.ns, qpn = %self.qpn);
            return;
        }
        let bytes = original.to_ne_bytes();
        if Self::scatter(self.pd, &wqe.wr.sg_list, 0, &bytes, ctx.memory).is_err() {
            self.fail_send(WcStatus::LocProtErr, vendor_err::LOCAL_KEY, ctx);
            return;
        }
        self.sq[index].done = true;
        self.req.comp_psn = psn.next();
        self.progress(ctx);
    }
}
