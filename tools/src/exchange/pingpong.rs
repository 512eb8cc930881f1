//! rdma-core's `ibv_rc_pingpong` / `ibv_ud_pingpong` exchange.
//!
//! Source: rdma-core `libibverbs/examples/rc_pingpong.c` and `ud_pingpong.c`
//! (`pp_client_exch_dest`, `pp_server_exch_dest`, identical in both tools) and
//! `pingpong.c` (`gid_to_wire_gid`, `wire_gid_to_gid`). Confirmed byte for byte by
//! `testdata/pcaps/rc_pingpong.pcap` and `ud_pingpong.pcap` (frames 4, 6, 8), and
//! live in both roles against rdma-core 44 in the rxe guest (`tools/examples/exchange_live.rs`).
//!
//! One message, [`MESSAGE_LEN`] = 52 bytes: `sprintf("%04x:%06x:%06x:%s")` of
//! LID : QPN : PSN : GID plus the terminating NUL, written whole. The GID is 32 hex
//! digits, four `%08x` of `htobe32` words, i.e. the 16 GID bytes in network order
//! (`::ffff:10.77.0.11` is `00000000000000000000ffff0a4d000b`). Without `-g` the GID is
//! all zeros but still sent.
//!
//! Order (TCP, client connects to the server's port, default 18515):
//! 1. client → server: the client's message;
//! 2. the server parses it and moves its QP to RTR (RC: and RTS), then
//!    server → client: the server's message;
//! 3. client → server: `"done\0"` (5 bytes); both close. The client moves its QP to
//!    RTR/RTS only after the exchange, so the server is always ready first.
//!
//! Both tools require every `read()` to return the whole message at once, which a
//! single write of the whole buffer gives. rdma-core parses leniently with `sscanf`;
//! [`PingpongDest::decode`] accepts only the fixed-width layout the tools write.

use std::io::{Read, Write};
use std::net::Ipv6Addr;

use ferroce_wire::psn::Psn;
use ferroce_wire::Qpn;

use super::{expect_byte, expect_length, parse_hex, put_hex, read_message, write_message};
use super::{MessageError, OobError, Result};

/// Size of the address message, including its terminating NUL.
pub const MESSAGE_LEN: usize = 52;

/// The client's final message.
pub const DONE_MESSAGE: [u8; 5] = *b"done\0";

const MESSAGE: &str = "pingpong address message";
const DONE: &str = "pingpong \"done\" message";

// Offsets of the fields in the 52-byte message.
const LID: usize = 0;
const QPN: usize = 5;
const PSN: usize = 12;
const GID: usize = 19;
const NUL: usize = 51;

/// One side's address as the pingpong examples send it (`struct pingpong_dest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PingpongDest {
    /// Port LID; 0 on RoCE.
    pub lid: u16,
    /// The sender's QP number.
    pub qpn: Qpn,
    /// The sender's first send PSN (its peer's expected receive PSN).
    pub psn: Psn,
    /// The sender's GID (an IPv4-mapped address for RoCEv2 over IPv4).
    pub gid: Ipv6Addr,
}

impl PingpongDest {
    /// The 52-byte message for this address.
    pub fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut out = [0u8; MESSAGE_LEN];
        put_hex(&mut out[LID..], u64::from(self.lid), 4);
        out[QPN - 1] = b':';
        put_hex(&mut out[QPN..], u64::from(self.qpn.value()), 6);
        out[PSN - 1] = b':';
        put_hex(&mut out[PSN..], u64::from(self.psn.value()), 6);
        out[GID - 1] = b':';
        put_hex(&mut out[GID..], u128_high(self.gid), 16);
        put_hex(&mut out[GID + 16..], u128_low(self.gid), 16);
        // out[NUL] is already 0.
        out
    }

    /// Parses a 52-byte message.
    pub fn decode(bytes: &[u8]) -> std::result::Result<PingpongDest, MessageError> {
        expect_length(bytes, MESSAGE_LEN, MESSAGE)?;
        let lid = parse_hex(bytes, LID, 4, MESSAGE)?;
        expect_byte(bytes, QPN - 1, b':', MESSAGE)?;
        let qpn = parse_hex(bytes, QPN, 6, MESSAGE)?;
        expect_byte(bytes, PSN - 1, b':', MESSAGE)?;
        let psn = parse_hex(bytes, PSN, 6, MESSAGE)?;
        expect_byte(bytes, GID - 1, b':', MESSAGE)?;
        let high = parse_hex(bytes, GID, 16, MESSAGE)?;
        let low = parse_hex(bytes, GID + 16, 16, MESSAGE)?;
        expect_byte(bytes, NUL, 0, MESSAGE)?;
        // The widths bound every value: 4 digits fit u16, 6 digits fit 24 bits.
        Ok(PingpongDest {
            lid: u16::try_from(lid).unwrap_or(u16::MAX),
            qpn: Qpn::new(u32::try_from(qpn).unwrap_or(Qpn::MAX)),
            psn: Psn::new(u32::try_from(psn).unwrap_or(Psn::MASK)),
            gid: Ipv6Addr::from((u128::from(high) << 64) | u128::from(low)),
        })
    }
}

fn u128_high(gid: Ipv6Addr) -> u64 {
    (u128::from(gid) >> 64) as u64
}

fn u128_low(gid: Ipv6Addr) -> u64 {
    u128::from(gid) as u64
}

/// The client side: sends `local`, reads the server's address, sends `"done\0"`.
///
/// The server has moved its QP to RTR/RTS before answering, so the caller may connect
/// its QP and start sending as soon as this returns.
pub fn client_exchange<S: Read + Write>(
    stream: &mut S,
    local: &PingpongDest,
) -> Result<PingpongDest> {
    write_message(stream, &local.encode(), MESSAGE)?;
    let reply = read_message::<MESSAGE_LEN>(stream, MESSAGE)?;
    let remote = PingpongDest::decode(&reply)?;
    write_message(stream, &DONE_MESSAGE, DONE)?;
    Ok(remote)
}

/// The server side: reads the client's address, calls `before_reply` with it (move the
/// QP to RTR/RTS there: the client may send as soon as it has the answer), sends
/// `local`, and reads the client's `"done\0"`.
///
/// If `before_reply` fails, nothing is sent and the error is returned as
/// [`OobError::Callback`] (the client then sees the connection close, as with
/// rdma-core's server).
pub fn server_exchange<S, F>(
    stream: &mut S,
    local: &PingpongDest,
    before_reply: F,
) -> Result<PingpongDest>
where
    S: Read + Write,
    F: FnOnce(&PingpongDest) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>,
{
    let request = read_message::<MESSAGE_LEN>(stream, MESSAGE)?;
    let remote = PingpongDest::decode(&request)?;
    before_reply(&remote).map_err(OobError::Callback)?;
    write_message(stream, &local.encode(), MESSAGE)?;
    let done = read_message::<{ DONE_MESSAGE.len() }>(stream, DONE)?;
    if done != DONE_MESSAGE {
        let offset = done
            .iter()
            .zip(DONE_MESSAGE.iter())
            .position(|(found, expected)| found != expected)
            .unwrap_or(0);
        return Err(MessageError::Layout {
            message: DONE,
            offset,
            found: done.get(offset).copied().unwrap_or(0),
            expected: "\"done\\0\"",
        }
        .into());
    }
    Ok(remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rc_pingpong.pcap` frame 4 (client → server).
    const CLIENT: &[u8; MESSAGE_LEN] = b"0000:000011:929d02:00000000000000000000ffff0a4d000b\0";

    #[test]
    fn decodes_and_encodes_captured_message() {
        let dest = PingpongDest::decode(CLIENT).expect("captured message");
        assert_eq!(dest.lid, 0);
        assert_eq!(dest.qpn, Qpn::new(0x11));
        assert_eq!(dest.psn, Psn::new(0x929d02));
        assert_eq!(
            dest.gid,
            "::ffff:10.77.0.11".parse::<Ipv6Addr>().expect("literal")
        );
        assert_eq!(&dest.encode(), CLIENT);
    }

    #[test]
    fn layout_errors_name_the_byte() {
        let mut bad = *CLIENT;
        bad[4] = b'-';
        assert_eq!(
            PingpongDest::decode(&bad),
            Err(MessageError::Layout {
                message: MESSAGE,
                offset: 4,
                found: b'-',
                expected: "':'",
            })
        );
        let mut unterminated = *CLIENT;
        unterminated[NUL] = b'0';
        assert!(matches!(
            PingpongDest::decode(&unterminated),
            Err(MessageError::Layout { offset: NUL, .. })
        ));
        assert!(matches!(
            PingpongDest::decode(&CLIENT[..51]),
            Err(MessageError::Length { actual: 51, .. })
        ));
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let upper = b"00AB:0000FF:ABCDEF:FE800000000000000000000000000001\0";
        let dest = PingpongDest::decode(upper).expect("uppercase");
        assert_eq!(dest.lid, 0xab);
        assert_eq!(dest.psn, Psn::new(0xabcdef));
        assert_eq!(dest.gid, "fe80::1".parse::<Ipv6Addr>().expect("literal"));
    }
}
