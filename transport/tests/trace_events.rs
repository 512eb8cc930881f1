#![allow(clippy::unwrap_used)]
//! The engine's trace points: what an operator sees with `RUST_LOG=debug` when a QP
//! changes state, loses a packet, is NAKed, times out, waits out an RNR NAK, runs out
//! of retries or drops a packet — each event naming the QP (and its namespace).

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferroce_transport::engine::{QpState, QpType, SendOp, Time, WcStatus};
use ferroce_transport::wire::{OpCode, Qpn};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// One event as a subscriber saw it: its level, message and fields as text.
#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    message: String,
    fields: BTreeMap<String, String>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

impl Visit for Captured {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().to_owned(), text);
        }
    }
}

/// A layer that keeps every event of every level.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut captured = Captured {
            level: *event.metadata().level(),
            message: String::new(),
            fields: BTreeMap::new(),
        };
        event.record(&mut captured);
        self.0.lock().unwrap().push(captured);
    }
}

impl Capture {
    /// Runs `f` with this layer as the thread's subscriber (the engines are driven on
    /// this thread, so every engine event lands here and no other test's does).
    fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::with_default(subscriber, f)
    }

    /// Takes the events captured so far.
    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The events with `message` about `qpn` in the default namespace.
fn about<'a>(events: &'a [Captured], message: &str, qpn: Qpn) -> Vec<&'a Captured> {
    let qpn = qpn.to_string();
    events
        .iter()
        .filter(|e| e.message == message && e.field("qpn") == Some(&qpn))
        .inspect(|e| assert_eq!(e.field("ns"), Some("ns0"), "{e:?}"))
        .collect()
}

fn describe(events: &[Captured]) -> String {
    events
        .iter()
        .map(|e| format!("{} {} {:?}\n", e.level, e.message, e.fields))
        .collect()
}

fn write_to_b(pair: &Pair, wr_id: u64, offset: u64, len: u32) -> ferroce_transport::engine::SendWr {
    send_wr(
        wr_id,
        SendOp::RdmaWrite {
            remote_addr: pair.b.mr.addr + offset,
            rkey: pair.b.mr.rkey,
        },
        vec![pair.a.sge(offset, len)],
    )
}

/// Runs a WRITE of `len` bytes from A to B whose first `lost` packet is lost once;
/// returns its completion status.
fn write_losing_once(pair: &mut Pair, wr_id: u64, len: u32, lost: OpCode) -> Option<WcStatus> {
    pair.drop_once(Dir::AtoB, move |r| r.bth.opcode == lost);
    let wr = write_to_b(pair, wr_id, 0, len);
    pair.a.post_send(wr);
    pair.run();
    pair.a.poll().last().map(|wc| wc.status)
}

/// A connected RC pair whose QPs have different numbers (B's is its engine's second
/// QP), so each event's QPN says which side it came from.
fn distinct_qpns(p: Params) -> Pair {
    let mut a = Side::new(
        Ipv4Addr::new(10, 0, 0, 1).into(),
        1,
        QpType::Rc,
        all_access(),
    );
    let mut b = Side::new(
        Ipv4Addr::new(10, 0, 0, 2).into(),
        2,
        QpType::Rc,
        all_access(),
    );
    b.qpn = b
        .engine
        .create_qp(NS, init_attr(QpType::Rc, b.pd, b.cq))
        .unwrap();
    connect(&mut a.engine, NS, a.qpn, b.addr, b.qpn, QpType::Rc, &p);
    connect(&mut b.engine, NS, b.qpn, a.addr, a.qpn, QpType::Rc, &p);
    Pair {
        a,
        b,
        now: Time::ZERO,
        filter: Box::new(|_, _, _| true),
        log: Vec::new(),
        lend: false,
        lent: 0,
    }
}

/// Connecting, a lost packet mid-message (PSN sequence NAK, go-back-N, retransmits), a
/// lost last packet (retransmit timeout), an RNR wait, retry exhaustion and a drop in
/// the error state: each is reported with the QP it happened to.
#[test]
fn engine_events_name_the_qp() {
    let capture = Capture::default();
    capture.during(|| {
        // IB timeout 10: 4.096 µs × 2^10 ≈ 4 ms; one retry, so a dead link fails fast.
        let params = Params {
            timeout: 10,
            retry_cnt: 1,
            ..Params::default()
        };
        let mut pair = distinct_qpns(params);
        let (a, b) = (pair.a.qpn, pair.b.qpn);
        assert_ne!(a, b);
        let events = capture.take();
        for qpn in [a, b] {
            let states: Vec<_> = about(&events, "QP state changed", qpn)
                .iter()
                .map(|e| {
                    (
                        e.field("from").unwrap().to_owned(),
                        e.field("to").unwrap().to_owned(),
                    )
                })
                .collect();
            assert_eq!(
                states,
                [("Reset", "Init"), ("Init", "Rtr"), ("Rtr", "Rts")]
                    .map(|(f, t)| (f.to_owned(), t.to_owned())),
                "{}",
                describe(&events)
            );
        }

        // The first packet of a 3-packet WRITE is lost: B drops the next one as out of
        // sequence and NAKs, A goes back and resends.
        pair.a.write(0, &pattern(3072, 1));
        let status = write_losing_once(&mut pair, 1, 3072, OpCode::RcWriteFirst);
        assert_eq!(status, Some(WcStatus::Success));
        let events = capture.take();
        let all = describe(&events);
        let drops = about(&events, "packet dropped", b);
        assert!(
            drops
                .iter()
                .any(|e| e.field("reason") == Some("out_of_sequence")),
            "{all}"
        );
        let sent = about(&events, "NAK sent", b);
        assert_eq!(sent.len(), 1, "{all}");
        assert_eq!(sent[0].field("syndrome"), Some("Nak(PsnSequenceError)"));
        assert_eq!(sent[0].level, Level::DEBUG);
        let received = about(&events, "NAK received", a);
        assert_eq!(received.len(), 1, "{all}");
        assert_eq!(received[0].field("syndrome"), Some("Nak(PsnSequenceError)"));
        assert_eq!(about(&events, "going back to resend", a).len(), 1, "{all}");
        let resent = about(&events, "retransmit", a);
        assert!(!resent.is_empty(), "{all}");
        assert!(resent.iter().all(|e| e.level == Level::TRACE), "{all}");

        // The last packet is lost: nothing follows it to draw a NAK, so the retransmit
        // timer fires and A resends.
        let status = write_losing_once(&mut pair, 2, 512, OpCode::RcWriteOnly);
        assert_eq!(status, Some(WcStatus::Success));
        let events = capture.take();
        let timeouts = about(&events, "retransmit timeout", a);
        assert_eq!(timeouts.len(), 1, "{}", describe(&events));
        assert_eq!(timeouts[0].field("retry_left"), Some("1"));

        // A SEND with no receive posted: B NAKs RNR, A waits, B posts, A resends.
        pair.a
            .post_send(send_wr(3, SendOp::Send, vec![pair.a.sge(0, 64)]));
        pair.run_for(Duration::from_micros(100));
        pair.b.post_recv(30, 0, 64);
        pair.run();
        assert_eq!(
            pair.a.poll().last().map(|wc| wc.status),
            Some(WcStatus::Success)
        );
        let events = capture.take();
        let all = describe(&events);
        let sent = about(&events, "NAK sent", b);
        assert!(!sent.is_empty(), "{all}");
        assert!(
            sent.iter()
                .all(|e| e.field("syndrome").is_some_and(|s| s.starts_with("RnrNak"))),
            "{all}"
        );
        assert_eq!(about(&events, "NAK received", a).len(), sent.len(), "{all}");
        assert_eq!(about(&events, "RNR wait", a).len(), sent.len(), "{all}");
        assert!(
            !about(&events, "RNR wait over; resending", a).is_empty(),
            "{all}"
        );

        // The link to B dies: A times out twice (timeouts that spend a retry; the
        // measured round trip resends sooner too, for free), runs out of retries, fails
        // the WRITE and enters the error state.
        pair.filter = Box::new(|dir, _, _| dir != Dir::AtoB);
        pair.a.post_send(write_to_b(&pair, 4, 0, 512));
        pair.run();
        assert_eq!(
            pair.a.poll().last().map(|wc| wc.status),
            Some(WcStatus::RetryExcErr)
        );
        assert_eq!(pair.a.state(), QpState::Err);
        let events = capture.take();
        let all = describe(&events);
        let timeouts = about(&events, "retransmit timeout", a);
        let spending = |e: &&&Captured| e.field("expiry") == Some("Retry");
        assert_eq!(timeouts.iter().filter(spending).count(), 2, "{all}");
        let failed = about(&events, "send failed; QP goes to error", a);
        assert_eq!(failed.len(), 1, "{all}");
        assert_eq!(failed[0].field("status"), Some("RetryExcErr"));
        let to_err = about(&events, "QP state changed", a);
        assert_eq!(to_err.len(), 1, "{all}");
        assert_eq!(
            (to_err[0].field("from"), to_err[0].field("to")),
            (Some("Rts"), Some("Err"))
        );

        // B's WRITE reaches A in the error state: dropped, by reason, with A's QPN.
        pair.filter = Box::new(|_, _, _| true);
        pair.b.post_send(send_wr(
            5,
            SendOp::RdmaWrite {
                remote_addr: pair.a.mr.addr,
                rkey: pair.a.mr.rkey,
            },
            vec![pair.b.sge(0, 64)],
        ));
        pair.run();
        let events = capture.take();
        let drops = about(&events, "packet dropped", a);
        assert!(!drops.is_empty(), "{}", describe(&events));
        assert!(drops
            .iter()
            .all(|e| e.field("reason") == Some("wrong_state") && e.level == Level::DEBUG));
    });
}

/// A datagram for a QP that does not exist is dropped as `unknown_qp`, naming the QPN
/// it was sent to and the namespace that has no such QP.
#[test]
fn drop_of_an_unknown_qp_names_it() {
    let capture = Capture::default();
    capture.during(|| {
        let mut pair = Pair::rc();
        let gone = pair.b.qpn;
        pair.b.engine.destroy_qp(NS, gone).unwrap();
        pair.a.write(0, &pattern(64, 2));
        pair.a.post_send(write_to_b(&pair, 1, 0, 64));
        pair.run_for(Duration::from_micros(50));
        let events = capture.take();
        let drops = about(&events, "packet dropped", gone);
        assert!(!drops.is_empty(), "{}", describe(&events));
        assert_eq!(drops[0].field("reason"), Some("unknown_qp"));
    });
}
