//! Any bytes as a RoCEv2 UDP payload: the parser and everything that reads its result
//! (ICRC check, segmentation rule, Display) must return, never panic.
#![no_main]

use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

use ferroce_wire::icrc::{self, Envelope};
use ferroce_wire::packet::{self, PATH_MTUS};
use libfuzzer_sys::fuzz_target;

/// Guest 10.77.0.11 to host 10.77.0.1 as in the interop harness (IP ID 0, DF).
const IPV4: Envelope = Envelope::ipv4(
    Ipv4Addr::new(10, 77, 0, 11),
    Ipv4Addr::new(10, 77, 0, 1),
    0,
    49441,
);
/// The same pair as IPv4-mapped IPv6 addresses.
const IPV6: Envelope = Envelope::ipv6(
    Ipv4Addr::new(10, 77, 0, 11).to_ipv6_mapped(),
    Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a4d, 0x0001),
    49441,
);

fuzz_target!(|data: &[u8]| {
    let mut text = String::new();
    match packet::parse(data) {
        Ok(parsed) => {
            for envelope in [&IPV4, &IPV6] {
                let verified = icrc::verify(envelope, data);
                assert!(
                    verified.is_ok(),
                    "a parsed packet is long enough for its ICRC"
                );
            }
            for path_mtu in PATH_MTUS {
                let _ = parsed.check_segment(path_mtu);
            }
            let _ = write!(text, "{} len={}", parsed.repr, parsed.payload.len());
            if let Ok(info) = parsed.repr.info() {
                let _ = write!(text, " {info:?}");
            }
        }
        Err(error) => {
            let _ = write!(text, "{error}");
        }
    }
});
