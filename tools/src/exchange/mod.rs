//! Out-of-band connection exchanges of the common RDMA test tools, over TCP.
//!
//! Before any RoCE traffic, `ibv_rc_pingpong`/`ibv_ud_pingpong` (rdma-core) and the
//! perftest tools (`ib_write_bw`, `ib_send_lat`, …) swap their QP numbers, PSNs, GIDs
//! and memory keys over a plain TCP connection (port [`DEFAULT_PORT`] unless `-p`).
//! [`pingpong`] speaks rdma-core's exchange, [`perftest`] perftest's. Both work over any
//! `Read + Write` (a `TcpStream`, or an in-memory pipe in tests) and never touch the
//! RDMA engine: the caller moves its QPs between states from the callbacks.
//!
//! Every message of both tools is written by a single `write()` of a fixed-size buffer
//! and read by a single `read()` that must return the whole buffer, so ferroce writes
//! each message with one `write_all` of one buffer (one TCP segment in practice) and
//! reads with `read_exact`. Peer input is validated strictly (fixed-width lowercase or
//! uppercase hex, separators, terminating NUL); nothing here panics on any input.

pub mod perftest;
pub mod pingpong;

use std::io::{self, Read, Write};

/// The TCP port both rdma-core's pingpong examples and perftest use by default.
pub const DEFAULT_PORT: u16 = 18515;

/// A received message that does not have the layout the tools write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The message has the wrong size.
    #[error("{message}: {actual} bytes, expected {expected}")]
    Length {
        /// Which message.
        message: &'static str,
        /// Its fixed size.
        expected: usize,
        /// The size received.
        actual: usize,
    },
    /// A byte that breaks the message's layout.
    #[error("{message}: byte {offset} is {found:#04x}, expected {expected}")]
    Layout {
        /// Which message.
        message: &'static str,
        /// Offset of the offending byte.
        offset: usize,
        /// The byte found there.
        found: u8,
        /// What the layout has there.
        expected: &'static str,
    },
    /// A well-formed field whose value the protocol does not allow.
    #[error("{message}: {field} {reason}")]
    Value {
        /// Which message.
        message: &'static str,
        /// Which field.
        field: &'static str,
        /// Why the value is refused.
        reason: &'static str,
    },
}

/// Why an out-of-band exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OobError {
    /// The socket failed.
    #[error("out-of-band socket: {0}")]
    Io(#[from] io::Error),
    /// A read timeout the caller set on the socket expired before the peer's message
    /// came (a peer that accepted the connection and went silent).
    #[error("timed out waiting for the peer's {message}")]
    TimedOut {
        /// The message being waited for.
        message: &'static str,
    },
    /// A write timeout the caller set on the socket expired: the peer stopped reading.
    #[error("timed out sending our {message}: the peer does not read")]
    SendTimedOut {
        /// The message being sent.
        message: &'static str,
    },
    /// The peer closed the connection in the middle of, or instead of, a message.
    #[error("peer closed the connection after {received} of {expected} bytes of {message}")]
    Closed {
        /// The message being read.
        message: &'static str,
        /// Bytes it has.
        expected: usize,
        /// Bytes received before the end of the stream.
        received: usize,
    },
    /// The peer sent a malformed message.
    #[error("malformed message from the peer: {0}")]
    Message(#[from] MessageError),
    /// The peer runs a perftest version this exchange cannot talk to.
    #[error("peer perftest version {remote:?} is older than {minimum:?}, the oldest compatible")]
    IncompatibleVersion {
        /// The version string the peer sent.
        remote: String,
        /// The oldest version perftest itself accepts.
        minimum: &'static str,
    },
    /// The caller's callback (moving the QP to RTR/RTS) failed; the exchange stopped
    /// before answering the peer.
    #[error("local setup between the exchange steps failed: {0}")]
    Callback(Box<dyn std::error::Error + Send + Sync>),
    /// The caller used the exchange wrongly (for example no QP keys).
    #[error("out-of-band exchange misused: {0}")]
    Usage(&'static str),
}

/// The result of an out-of-band exchange step.
pub type Result<T> = std::result::Result<T, OobError>;

/// Reads exactly `N` bytes (one message), naming the message if the peer closes early.
fn read_message<const N: usize>(stream: &mut impl Read, message: &'static str) -> Result<[u8; N]> {
    let mut buffer = [0u8; N];
    read_into(stream, &mut buffer, message)?;
    Ok(buffer)
}

/// Fills `buffer` from the stream (one message of its size).
fn read_into(stream: &mut impl Read, buffer: &mut [u8], message: &'static str) -> Result<()> {
    let mut received = 0;
    while received < buffer.len() {
        match stream.read(&mut buffer[received..]) {
            Ok(0) => {
                return Err(OobError::Closed {
                    message,
                    expected: buffer.len(),
                    received,
                })
            }
            Ok(count) => received += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if is_timeout(&error) => return Err(OobError::TimedOut { message }),
            Err(error) => return Err(OobError::Io(error)),
        }
    }
    Ok(())
}

/// Whether a socket error is an expired read or write timeout (`SO_RCVTIMEO` gives
/// `EAGAIN` on Unix, `ETIMEDOUT` elsewhere).
fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Writes one whole message with a single buffer, then flushes (buffered writers).
fn write_message(stream: &mut impl Write, bytes: &[u8], message: &'static str) -> Result<()> {
    stream
        .write_all(bytes)
        .and_then(|()| stream.flush())
        .map_err(|error| {
            if is_timeout(&error) {
                OobError::SendTimedOut { message }
            } else {
                OobError::Io(error)
            }
        })
}

/// Writes `value` as exactly `width` lowercase hex digits into `out` (the `%0Nx` of the C
/// tools). The callers' types bound `value` to `width` digits; higher digits would be
/// dropped rather than widen the fixed-size message.
fn put_hex(out: &mut [u8], value: u64, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (index, byte) in out.iter_mut().take(width).enumerate() {
        let shift = 4 * (width - 1 - index);
        let nibble = if shift < 64 {
            (value >> shift) & 0xf
        } else {
            0
        };
        *byte = DIGITS[nibble as usize];
    }
}

/// Parses exactly `width` hex digits at `offset` (either case; the C readers use
/// `strtol`/`sscanf("%x")`, which accept both).
fn parse_hex(
    bytes: &[u8],
    offset: usize,
    width: usize,
    message: &'static str,
) -> std::result::Result<u64, MessageError> {
    let mut value = 0u64;
    for index in offset..offset + width {
        let found = bytes.get(index).copied().unwrap_or(0);
        let digit = match found {
            b'0'..=b'9' => found - b'0',
            b'a'..=b'f' => found - b'a' + 10,
            b'A'..=b'F' => found - b'A' + 10,
            _ => {
                return Err(MessageError::Layout {
                    message,
                    offset: index,
                    found,
                    expected: "a hex digit",
                })
            }
        };
        value = (value << 4) | u64::from(digit);
    }
    Ok(value)
}

/// Checks that `bytes[offset]` is `expected`.
fn expect_byte(
    bytes: &[u8],
    offset: usize,
    expected: u8,
    message: &'static str,
) -> std::result::Result<(), MessageError> {
    let found = bytes.get(offset).copied().unwrap_or(0);
    if found == expected {
        Ok(())
    } else {
        Err(MessageError::Layout {
            message,
            offset,
            found,
            expected: match expected {
                b':' => "':'",
                0 => "NUL",
                _ => "a separator",
            },
        })
    }
}

/// Checks a received message's length before parsing it.
fn expect_length(
    bytes: &[u8],
    expected: usize,
    message: &'static str,
) -> std::result::Result<(), MessageError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(MessageError::Length {
            message,
            expected,
            actual: bytes.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_case() {
        let mut out = [0u8; 6];
        put_hex(&mut out, 0x00da5e, 6);
        assert_eq!(&out, b"00da5e");
        assert_eq!(parse_hex(b"00DA5E", 0, 6, "t"), Ok(0xda5e));
        let mut wide = [0u8; 16];
        put_hex(&mut wide, u64::MAX, 16);
        assert_eq!(&wide, b"ffffffffffffffff");
        assert_eq!(parse_hex(&wide, 0, 16, "t"), Ok(u64::MAX));
    }

    #[test]
    fn hex_rejects_non_digits_and_short_input() {
        assert!(matches!(
            parse_hex(b"00g0", 0, 4, "t"),
            Err(MessageError::Layout {
                offset: 2,
                found: b'g',
                ..
            })
        ));
        assert!(matches!(
            parse_hex(b"00", 0, 4, "t"),
            Err(MessageError::Layout {
                offset: 2,
                found: 0,
                ..
            })
        ));
        assert!(parse_hex(b" 0ff", 0, 4, "t").is_err());
    }

    /// A reader whose timeout expires: what a `TcpStream` with a read timeout returns.
    struct Silent;

    impl Read for Silent {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    #[test]
    fn an_expired_read_timeout_names_the_message() {
        let error = read_message::<5>(&mut Silent, "test message").expect_err("times out");
        assert!(matches!(
            error,
            OobError::TimedOut {
                message: "test message"
            }
        ));
        assert_eq!(
            error.to_string(),
            "timed out waiting for the peer's test message"
        );
    }

    impl Write for Silent {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_expired_write_timeout_names_the_message() {
        let error = write_message(&mut Silent, b"x", "test message").expect_err("times out");
        assert_eq!(
            error.to_string(),
            "timed out sending our test message: the peer does not read"
        );
    }

    #[test]
    fn read_message_reports_partial_close() {
        let mut short: &[u8] = b"abc";
        match read_message::<5>(&mut short, "test message") {
            Err(OobError::Closed {
                expected: 5,
                received: 3,
                ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
