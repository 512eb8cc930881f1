//! Shared helpers of the out-of-band tests: the TCP payloads of the captures, and a
//! scripted peer that replays one side of a capture and checks the other byte for byte.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapReader;

/// The port the captured tools used.
pub const PORT: u16 = 18515;

pub fn pcaps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/pcaps")
}

/// One TCP segment with payload on port 18515.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sent by the side that connected (the perftest/pingpong client).
    pub from_client: bool,
    pub payload: Vec<u8>,
}

/// The TCP payloads of the first connection to port 18515 in `file`, one per segment,
/// in capture order. Panics (the test fails) if the capture has gaps or retransmits.
pub fn tcp_messages(file: &str) -> Vec<Message> {
    let bytes = std::fs::read(pcaps().join(file)).expect("capture file");
    let mut reader = PcapReader::new(&bytes[..]).expect("pcap header");
    let mut client_port = None;
    // Next expected sequence number per direction (client→server, server→client).
    let mut next_sequence: [Option<u32>; 2] = [None, None];
    let mut messages = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.expect("pcap record");
        let frame = &packet.data[..];
        if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[9] != 6 {
            continue;
        }
        let tcp = &ip[header_len..total_len];
        let source = u16::from_be_bytes([tcp[0], tcp[1]]);
        let destination = u16::from_be_bytes([tcp[2], tcp[3]]);
        let sequence = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let data_offset = usize::from(tcp[12] >> 4) * 4;
        let payload = &tcp[data_offset..];
        let from_client = destination == PORT;
        let client = if from_client { source } else { destination };
        if source != PORT && destination != PORT {
            continue;
        }
        if *client_port.get_or_insert(client) != client {
            continue;
        }
        if payload.is_empty() {
            continue;
        }
        let direction = usize::from(!from_client);
        if let Some(expected) = next_sequence[direction] {
            assert_eq!(sequence, expected, "{file}: TCP gap or retransmission");
        }
        next_sequence[direction] = Some(sequence.wrapping_add(payload.len() as u32));
        messages.push(Message {
            from_client,
            payload: payload.to_vec(),
        });
    }
    messages
}

/// A stream that plays the peer of a captured exchange: it serves the peer's messages
/// when the script reaches them, and checks that what the code under test writes is
/// exactly the captured bytes of its side, in the captured order.
#[derive(Debug)]
pub struct ScriptedPeer {
    /// (written by the code under test, bytes)
    script: VecDeque<(bool, Vec<u8>)>,
    pending: Vec<u8>,
    incoming: VecDeque<u8>,
    /// Bytes written by the code under test that matched the script.
    pub matched: usize,
}

impl ScriptedPeer {
    /// `ours_is_client`: the code under test plays the client.
    pub fn new(messages: &[Message], ours_is_client: bool) -> ScriptedPeer {
        ScriptedPeer {
            script: messages
                .iter()
                .map(|message| {
                    (
                        message.from_client == ours_is_client,
                        message.payload.clone(),
                    )
                })
                .collect(),
            pending: Vec::new(),
            incoming: VecDeque::new(),
            matched: 0,
        }
    }

    /// Whether every scripted message was written or served.
    pub fn is_finished(&self) -> bool {
        self.script.is_empty() && self.pending.is_empty() && self.incoming.is_empty()
    }

    pub fn remaining(&self) -> usize {
        self.script.len()
    }
}

impl Read for ScriptedPeer {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            match self.script.front() {
                None => return Ok(0),
                Some((true, expected)) => {
                    return Err(io::Error::other(format!(
                        "read while the capture has this side write {} bytes next (would deadlock)",
                        expected.len()
                    )))
                }
                Some((false, _)) => {
                    if let Some((_, bytes)) = self.script.pop_front() {
                        self.incoming.extend(bytes);
                    }
                }
            }
        }
        let count = buffer.len().min(self.incoming.len());
        for (slot, byte) in buffer.iter_mut().zip(self.incoming.drain(..count)) {
            *slot = byte;
        }
        Ok(count)
    }
}

impl Write for ScriptedPeer {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buffer);
        if self.script.is_empty() && !self.pending.is_empty() {
            return Err(io::Error::other("wrote after the end of the capture"));
        }
        while let Some((ours, expected)) = self.script.front() {
            if self.pending.is_empty() {
                break;
            }
            if !ours {
                return Err(io::Error::other(format!(
                    "wrote {:02x?} while the capture has the peer send {} bytes next",
                    self.pending,
                    expected.len()
                )));
            }
            if self.pending.len() < expected.len() {
                break;
            }
            if self.pending[..expected.len()] != expected[..] {
                return Err(io::Error::other(format!(
                    "wrote {:?}, capture has {:?}",
                    String::from_utf8_lossy(&self.pending[..expected.len()]),
                    String::from_utf8_lossy(expected)
                )));
            }
            self.matched += expected.len();
            self.pending.drain(..expected.len());
            self.script.pop_front();
        }
        Ok(buffer.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A byte stream fed from a fixed buffer, writes discarded: for truncation/garbage tests.
#[derive(Debug)]
pub struct FixedInput {
    pub input: io::Cursor<Vec<u8>>,
    pub written: Vec<u8>,
}

impl FixedInput {
    pub fn new(input: Vec<u8>) -> FixedInput {
        FixedInput {
            input: io::Cursor::new(input),
            written: Vec::new(),
        }
    }
}

impl Read for FixedInput {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.input.read(buffer)
    }
}

impl Write for FixedInput {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buffer);
        Ok(buffer.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
