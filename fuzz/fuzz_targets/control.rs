//! Control messages, as the daemon's socket receives them from tenants and tenants
//! receive them back: any bytes into the command and the reply decoder. Nothing may
//! panic, and whatever decodes is canonical: it encodes back to exactly the input, and
//! that decodes to the same value again.
#![no_main]

use std::fmt::Debug;

use ferroce_transport::control::{Command, DecodeError, EncodeError, Header, Reply};
use libfuzzer_sys::fuzz_target;

/// A message type's decoder, encoder and kind.
struct Codec<T> {
    parse: fn(&[u8]) -> Result<(u64, T), DecodeError>,
    emit: fn(&T, u64, &mut Vec<u8>) -> Result<(), EncodeError>,
    kind: fn(&T) -> u16,
}

fn check<T: PartialEq + Debug>(data: &[u8], codec: Codec<T>) {
    let Ok((id, message)) = (codec.parse)(data) else {
        return;
    };
    let header = Header::parse(data).expect("a message that decodes has a header");
    assert_eq!((header.request_id, header.kind), (id, (codec.kind)(&message)));
    let mut out = Vec::new();
    (codec.emit)(&message, id, &mut out).expect("a decoded message encodes");
    assert_eq!(out, data, "encode(decode(bytes)) == bytes");
    assert_eq!((codec.parse)(&out), Ok((id, message)));
}

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    check(
        data,
        Codec {
            parse: Command::parse,
            emit: Command::emit,
            kind: Command::kind,
        },
    );
    check(
        data,
        Codec {
            parse: Reply::parse,
            emit: Reply::emit,
            kind: Reply::kind,
        },
    );
});
