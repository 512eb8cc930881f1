//! What the tests between two loopback devices share: connecting a QP on each, waiting
//! for one completion, and test data.

use std::time::Duration;

use ferroce::wire::Psn;
use ferroce::WorkCompletion;
use ferroce::{AccessFlags, CompletionQueue, Device, PathMtu, QueuePair, RemoteEndpoint};

/// How long a test waits for a completion.
pub const WAIT: Duration = Duration::from_secs(10);

/// Every access right: local write and remote write, read and atomics.
pub fn all_access() -> AccessFlags {
    AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::REMOTE_ATOMIC
}

/// Connects `a`'s QP and `b`'s (each with its device) to each other at MTU 1024 with
/// every access right, their first PSNs `psns`.
pub fn connect(
    (a, a_qp): (&Device, &QueuePair),
    (b, b_qp): (&Device, &QueuePair),
    psns: (u32, u32),
) {
    let end = |device: &Device, qp: &QueuePair, psn| RemoteEndpoint {
        address: device.query_gid(0).expect("a GID"),
        qpn: qp.qp_num(),
        psn: Psn::new(psn),
    };
    let (end_a, end_b) = (end(a, a_qp, psns.0), end(b, b_qp, psns.1));
    a_qp.connect(end_b, end_a.psn, PathMtu::Mtu1024, all_access())
        .expect("connect a");
    b_qp.connect(end_a, end_b.psn, PathMtu::Mtu1024, all_access())
        .expect("connect b");
}

/// The one completion that arrives within [`WAIT`].
pub fn one(cq: &CompletionQueue) -> WorkCompletion {
    let mut got = cq
        .poll_wait(1, WAIT)
        .unwrap_or_else(|timeout| panic!("{timeout}"));
    got.remove(0)
}

/// `len` bytes that differ with `seed` and along the buffer.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
