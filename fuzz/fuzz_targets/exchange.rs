//! The perftest and pingpong TCP exchanges against a hostile peer: whole sessions (both
//! roles, every tool, one to three QPs) read the peer's side from the input, delivered
//! in reads of the size the input picks, and every message decoder is fed the raw
//! bytes too. Nothing may panic; a message that decodes must encode back to itself.
#![no_main]

use std::io::{self, Read, Write};
use std::net::Ipv6Addr;

use ferroce_tools::exchange::perftest::{
    self, BwReport, KeyFormat, PerftestConfig, PerftestKeys, PerftestVersion, TestKind, TestSpec,
    Verb,
};
use ferroce_tools::exchange::pingpong::{self, PingpongDest};
use ferroce_transport::wire::{Psn, Qpn, Rkey};
use libfuzzer_sys::fuzz_target;

/// The peer's end of the TCP connection: reads return the input's bytes in the chunk
/// sizes it chose (a short read is what a real socket may give), writes vanish.
struct Peer<'a> {
    incoming: &'a [u8],
    chunk: usize,
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = if self.chunk == 0 {
            buf.len()
        } else {
            self.chunk
        };
        let n = want.min(buf.len()).min(self.incoming.len());
        buf[..n].copy_from_slice(&self.incoming[..n]);
        self.incoming = &self.incoming[n..];
        Ok(n)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The first two input bytes: which session this end runs (the rest is the peer's
/// stream). A fixed layout, so `seed_corpus.py` can write seeds from captured streams.
#[derive(Debug)]
struct Session {
    pingpong: bool,
    client: bool,
    verb: Verb,
    latency: bool,
    duplex: bool,
    without_gid: bool,
    report_per_port: bool,
    queue_pairs: usize,
    /// Bytes each read returns at most (0: as many as asked).
    chunk: usize,
}

impl Session {
    /// Byte 0: bit 0 pingpong, bit 1 client, bits 2-3 verb (send, write, read, atomic),
    /// bit 4 latency, bit 5 duplex, bit 6 without GID, bit 7 per-port report. Byte 1:
    /// bits 0-1 QPs less one (three at most), bits 2-7 the read chunk size.
    fn parse(data: &[u8]) -> Option<(Session, &[u8])> {
        let (&[mode, sizes], incoming) = data.split_first_chunk::<2>()?;
        let bit = |n: u8| mode & (1 << n) != 0;
        let session = Session {
            pingpong: bit(0),
            client: bit(1),
            verb: [Verb::Send, Verb::Write, Verb::Read, Verb::Atomic][usize::from((mode >> 2) & 3)],
            latency: bit(4),
            duplex: bit(5),
            without_gid: bit(6),
            report_per_port: bit(7),
            queue_pairs: usize::from(sizes & 3).min(2) + 1,
            chunk: usize::from(sizes >> 2),
        };
        Some((session, incoming))
    }
}

fn local_keys(index: usize) -> PerftestKeys {
    PerftestKeys {
        lid: 0,
        out_reads: 1,
        qpn: Qpn::new(0x11 + index as u32),
        psn: Psn::new(0x1234),
        rkey: Rkey(0x100 + index as u32),
        vaddr: 0x7f00_0000_0000,
        gid: Ipv6Addr::from(0xffff_0a00_0001u128),
        srqn: 0,
    }
}

fn run_session(session: &Session, incoming: &[u8]) {
    let mut peer = Peer {
        incoming,
        chunk: session.chunk,
    };
    if session.pingpong {
        let local = PingpongDest {
            lid: 0,
            qpn: Qpn::new(0x11),
            psn: Psn::new(0x42),
            gid: Ipv6Addr::LOCALHOST,
        };
        let _ = if session.client {
            pingpong::client_exchange(&mut peer, &local)
        } else {
            pingpong::server_exchange(&mut peer, &local, |_| Ok(()))
        };
        return;
    }
    let test = TestSpec {
        verb: session.verb,
        kind: if session.latency {
            TestKind::Latency
        } else {
            TestKind::Bandwidth
        },
        duplex: session.duplex,
    };
    let config = PerftestConfig {
        key_format: if session.without_gid {
            KeyFormat::WithoutGid
        } else {
            KeyFormat::WithGid
        },
        report_per_port: session.report_per_port,
        ..PerftestConfig::default()
    };
    let queue_pairs = session.queue_pairs;
    let keys = |_: &perftest::Negotiated| Ok((0..queue_pairs).map(local_keys).collect());
    let handshake = if session.client {
        perftest::client_handshake(peer, test, config, keys, |_| Ok(()))
    } else {
        perftest::server_handshake(peer, test, config, keys, |_| Ok(()))
    };
    if let Ok(mut session) = handshake {
        let _ = session.finish(&BwReport::default());
    }
}

/// Every decoder on the raw bytes; what decodes must survive encode → decode.
fn decode_messages(bytes: &[u8]) {
    if let Ok(dest) = PingpongDest::decode(bytes) {
        assert_eq!(PingpongDest::decode(&dest.encode()), Ok(dest));
    }
    if let Ok(keys) = PerftestKeys::decode(bytes) {
        let format = if bytes.len() == KeyFormat::WithGid.message_len() {
            KeyFormat::WithGid
        } else {
            KeyFormat::WithoutGid
        };
        assert_eq!(PerftestKeys::decode(&keys.encode(format)), Ok(keys));
    }
    if let Ok(version) = PerftestVersion::decode(bytes) {
        let _ = (version.number(), version.is_compatible());
        assert_eq!(PerftestVersion::decode(&version.encode()), Ok(version));
    }
    if let Ok(mtu) = perftest::decode_mtu(bytes) {
        assert_eq!(perftest::decode_mtu(&perftest::encode_mtu(mtu)), Ok(mtu));
    }
    if let Ok(field) = <[u8; 4]>::try_from(bytes.get(..4).unwrap_or_default()) {
        let _ = perftest::decode_system_value(field, "fuzz");
    }
    let fields: Vec<[u8; 8]> = bytes
        .chunks_exact(8)
        .map(|c| <[u8; 8]>::try_from(c).unwrap_or_default())
        .collect();
    let _ = BwReport::decode_fields(&fields);
}

fuzz_target!(|data: &[u8]| {
    let Some((session, incoming)) = Session::parse(data) else {
        return;
    };
    decode_messages(incoming);
    run_session(&session, incoming);
});
