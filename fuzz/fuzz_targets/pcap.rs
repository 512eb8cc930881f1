//! Any bytes as a capture file: `ferroce decode` (text and JSON) and the capture reader
//! under it, GSO splitting included, return a summary or an error, never panic.
#![no_main]

use ferroce_tools::capture::{FrameContent, Reader};
use ferroce_tools::decode::{self, Options};
use ferroce_transport::wire::ROCEV2_UDP_PORT;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for json in [false, true] {
        let options = Options {
            json,
            port: ROCEV2_UDP_PORT,
        };
        let mut out = Vec::new();
        decode::decode(data, options, &mut out).expect("writing to a Vec cannot fail");
    }
    // The reader on its own, with what `decode` may not look at on every frame.
    let Ok(reader) = Reader::new(data) else {
        return;
    };
    for frame in reader {
        let Ok(frame) = frame else {
            break;
        };
        if let FrameContent::RoceV2(datagram) = frame.content {
            let (_, _) = (datagram.source(), datagram.destination());
            for segment in datagram.gso_segments().unwrap_or_default() {
                assert!(segment.payload.len() <= datagram.payload.len());
            }
        }
    }
});
