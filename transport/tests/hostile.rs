#![allow(clippy::unwrap_used)]
//! A peer's bytes never panic the engine: valid packets of a real session, mutated and
//! re-sealed with a correct ICRC (so they get past the ICRC check and into the QP
//! code), fed to live QPs in every direction.

mod common;

use common::*;
use ferroce_transport::engine::{QpType, SendOp};
use ferroce_transport::wire::icrc::{self, Envelope};
use proptest::prelude::*;

/// Every datagram of a session that uses every RC operation, in order.
fn session() -> Vec<(Dir, ferroce_transport::engine::Datagram)> {
    let mut pair = Pair::rc();
    pair.b.post_recv(1, 0, 4096);
    pair.b.post_recv(2, 0, 4096);
    pair.a.write(0, &pattern(3000, 1));
    let rkey = pair.b.mr.rkey;
    let addr = pair.b.mr.addr;
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 3000)]));
    pair.a.post_send(send_wr(
        2,
        SendOp::RdmaWrite {
            remote_addr: addr,
            rkey,
        },
        vec![pair.a.sge(0, 2000)],
    ));
    pair.a.post_send(send_wr(
        3,
        SendOp::RdmaRead {
            remote_addr: addr,
            rkey,
        },
        vec![pair.a.sge(0, 2500)],
    ));
    pair.a.post_send(send_wr(
        4,
        SendOp::FetchAdd {
            remote_addr: addr + 8,
            rkey,
            add: 1,
        },
        vec![pair.a.sge(0, 8)],
    ));
    pair.a
        .post_send(send_wr(5, SendOp::SendWithImm(9), vec![pair.a.sge(0, 10)]));
    let mut out = Vec::new();
    for _ in 0..100 {
        let mut any = false;
        while let Some(d) = pair.a.engine.poll_transmit(pair.now) {
            any = true;
            pair.b.engine.handle_datagram(pair.now, d.meta, &d.payload);
            out.push((Dir::AtoB, d));
        }
        while let Some(d) = pair.b.engine.poll_transmit(pair.now) {
            any = true;
            pair.a.engine.handle_datagram(pair.now, d.meta, &d.payload);
            out.push((Dir::BtoA, d));
        }
        if !any {
            break;
        }
    }
    out
}

fn reseal(d: &ferroce_transport::engine::Datagram, bytes: &mut [u8]) {
    let (std::net::IpAddr::V4(s), std::net::IpAddr::V4(t)) = (d.meta.src, d.meta.dst) else {
        unreachable!("the pair is IPv4");
    };
    let env = Envelope::ipv4(s, t, 0, d.meta.src_port);
    if bytes.len() >= 16 {
        icrc::fill(&env, bytes).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mutated_packets_never_panic(
        picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>(), 0usize..3), 1..40),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let packets = session();
        let mut pair = Pair::rc();
        pair.b.post_recv(1, 0, 4096);
        pair.a.post_recv(1, 0, 4096);
        for (which, at, value, how) in picks {
            let (dir, d) = which.get(&packets);
            let mut bytes = d.payload.clone();
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = value,
                1 => bytes[i] ^= 1 << (value % 8),
                _ => bytes[i] = bytes[i].wrapping_add(value),
            }
            if let Some(t) = truncate {
                let keep = t.index(bytes.len() + 1) & !3;
                bytes.truncate(keep.max(16));
            }
            reseal(d, &mut bytes);
            let to = match dir {
                Dir::AtoB => &mut pair.b.engine,
                Dir::BtoA => &mut pair.a.engine,
            };
            to.handle_datagram(pair.now, d.meta, &bytes);
            // Whatever it answers, the other side must digest too.
            pair.run_for(std::time::Duration::from_millis(500));
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut pair = Pair::new(QpType::Rc, Params::default());
        let template = session().remove(0).1;
        let mut bytes = bytes;
        reseal(&template, &mut bytes);
        pair.b.engine.handle_datagram(pair.now, template.meta, &bytes);
        pair.run_for(std::time::Duration::from_millis(10));
    }
}
