//! The io_uring packet driver: one multishot `RecvMsg` feeding from a ring of provided
//! buffers, and `SendMsg`s batched into one `io_uring_enter`.
//!
//! The socket is the same as the portable driver's (`socket::bind_socket`).
//! The driver owns every buffer named by a submitted entry until that entry's completion
//! arrives; `Drop` cancels the receive and drains the ring before freeing anything.
//!
//! **Which thread owns the receive.** io_uring completes a poll-armed receive with task
//! work run by the task that *submitted* it, so its completions appear only when that
//! thread runs. Rounds of the engine run on whichever thread drives it (an application
//! polling, or the engine thread): a receive armed by a thread that is now asleep would
//! wake it for every datagram and hand each one across cores. So the receive follows the
//! driving thread: once another thread has run [`CLAIM_ROUNDS`] receiving rounds in a
//! row, the receive is cancelled and re-armed from that thread (datagrams wait in the
//! socket meanwhile; buffers the old receive filled are still consumed).
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::ThreadId;
use std::time::Duration;

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, IoUring};
use socket2::{SockAddr, Socket};

use super::gso::{self, split_gro, IcrcFixer, OutMessage, Spent};
use super::socket::{
    self, bind_socket, parse_control, Control, Offloads, Received, CMSG_SPACE, GRO_BUFFER,
};
use crate::engine::{DatagramMeta, LentDatagram};

/// Provided receive buffers (a power of two).
const RECV_BUFFERS: u16 = 64;
/// Buffer group id of the receive buffers.
const BUFFER_GROUP: u16 = 0;
/// `user_data` bit of the multishot receive (the rest is its generation, one per arming
/// thread); sends use their slot index.
const RECV_TAG: u64 = 1 << 63;
const CANCEL_TOKEN: u64 = 1 << 62;
/// `user_data` of the multishot poll on a descriptor the engine thread also waits for
/// (its doorbell), so that it can sleep in the ring.
const WATCH_TOKEN: u64 = 1 << 61;
/// Waits of 100 ms a dropped driver allows for the kernel to give back its buffers.
const DROP_WAITS: u32 = 100;
/// Consecutive receiving rounds a thread runs before the receive moves to it.
pub const CLAIM_ROUNDS: u32 = 32;
const NAME_SPACE: usize = mem::size_of::<libc::sockaddr_storage>();
/// Each provided buffer holds `io_uring_recvmsg_out`, the name, the control messages and
/// the payload (many datagrams with GRO).
const BUFFER_LEN: usize = 16 + NAME_SPACE + CMSG_SPACE + GRO_BUFFER;

/// `struct io_uring_buf` (linux/io_uring.h): one entry of a ring of provided buffers.
/// The first entry's `resv` is the ring's tail, which the kernel reads at any time.
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(mem::size_of::<RingEntry>() == mem::size_of::<BufRingEntry>());

/// The ring of provided buffers the kernel picks receive buffers from.
///
/// Both allocations are shared with the kernel, which writes any buffer it holds (every
/// one pushed and not yet named by a completion) whenever a datagram arrives, and reads
/// the entries and the tail. So they are reached through raw pointers only: no `&mut`
/// ever covers a buffer or the tail, and a `&[u8]` only a buffer the kernel handed back.
struct BufferRing {
    entries: NonNull<RingEntry>,
    entries_layout: Layout,
    buffers: NonNull<u8>,
    buffers_layout: Layout,
    tail: u16,
    /// Set when the kernel may still own the memory: dropping then leaks it.
    leak: bool,
}

impl BufferRing {
    fn new() -> io::Result<BufferRing> {
        let entries_layout =
            Layout::from_size_align(RECV_BUFFERS as usize * mem::size_of::<RingEntry>(), 4096)
                .map_err(|_| io::Error::other("buffer ring layout"))?;
        let buffers_layout = Layout::from_size_align(BUFFER_LEN * RECV_BUFFERS as usize, 64)
            .map_err(|_| io::Error::other("receive buffers layout"))?;
        // SAFETY: both layouts have a non-zero size.
        let (entries, buffers) = unsafe {
            (
                alloc::alloc_zeroed(entries_layout),
                alloc::alloc_zeroed(buffers_layout),
            )
        };
        let (Some(entries), Some(buffers)) = (NonNull::new(entries), NonNull::new(buffers)) else {
            // SAFETY: whichever was allocated, with its layout, and is freed once.
            unsafe {
                if !entries.is_null() {
                    alloc::dealloc(entries, entries_layout);
                }
                if !buffers.is_null() {
                    alloc::dealloc(buffers, buffers_layout);
                }
            }
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        let mut ring = BufferRing {
            entries: entries.cast(),
            entries_layout,
            buffers,
            buffers_layout,
            tail: 0,
            leak: false,
        };
        for bid in 0..RECV_BUFFERS {
            ring.push(bid);
        }
        Ok(ring)
    }

    /// The address of the ring's entries, to register with the kernel.
    fn entries_addr(&self) -> u64 {
        self.entries.as_ptr() as u64
    }

    /// Hands buffer `bid` (back) to the kernel. Through raw pointers: the kernel may be
    /// writing other buffers meanwhile, and reads the tail in the first entry.
    fn push(&mut self, bid: u16) {
        let bid = bid & (RECV_BUFFERS - 1);
        let index = (self.tail & (RECV_BUFFERS - 1)) as usize;
        // SAFETY: `bid < RECV_BUFFERS`, so the buffer starts inside the allocation.
        let addr = unsafe { self.buffers.as_ptr().add(bid as usize * BUFFER_LEN) } as u64;
        // SAFETY: `index < RECV_BUFFERS`, inside the entries' allocation. The kernel does
        // not read this entry until the tail below moves past it; its fields are written
        // one by one, so no reference covers the first entry's `resv` (the tail).
        unsafe {
            let entry = self.entries.as_ptr().add(index);
            std::ptr::addr_of_mut!((*entry).addr).write(addr);
            std::ptr::addr_of_mut!((*entry).len).write(BUFFER_LEN as u32);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail lives in the first entry's `resv`, 2-aligned inside the
        // allocation, which the kernel reads concurrently: it is only ever accessed
        // atomically from here, and the release store publishes the entry first.
        unsafe {
            let tail = std::ptr::addr_of_mut!((*self.entries.as_ptr()).resv);
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, which a completion named: the kernel has
    /// handed it back, and gets it again only from [`BufferRing::push`], which the
    /// borrow of the result keeps from running meanwhile.
    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let bid = bid & (RECV_BUFFERS - 1);
        // SAFETY: inside the allocation (`bid < RECV_BUFFERS`, `len <= BUFFER_LEN`); the
        // kernel no longer writes this buffer (see above) and no `&mut` to it exists.
        unsafe {
            std::slice::from_raw_parts(
                self.buffers.as_ptr().add(bid as usize * BUFFER_LEN),
                len.min(BUFFER_LEN),
            )
        }
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: allocated in `new` with these layouts and freed only here; the driver
        // unregistered the ring (or never registered it) and the kernel holds no buffer
        // (else `leak` is set).
        unsafe {
            alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            alloc::dealloc(self.buffers.as_ptr(), self.buffers_layout);
        }
    }
}

/// The io_uring driver.
pub struct UringDriver {
    ring: IoUring,
    socket: Socket,
    local: SocketAddr,
    buffers: BufferRing,
    /// The template of the multishot receive: only the name and control lengths matter,
    /// and the kernel reads it while the receive is armed, so it lives in a Box.
    recv_header: Box<libc::msghdr>,
    recv_armed: bool,
    /// Generation of the armed receive (its `user_data` is `RECV_TAG | generation`).
    recv_generation: u64,
    /// The thread that armed it, and the thread claiming it with its streak of rounds.
    recv_owner: Option<ThreadId>,
    claimant: Option<(ThreadId, u32)>,
    /// Cancelled receives whose last completion has not arrived yet.
    recv_retiring: usize,
    /// The descriptor watched by a multishot poll, while that poll is armed.
    watching: Option<RawFd>,
    /// Sends in flight, by slot (`user_data`): the kernel reads them until completion.
    sends: Vec<Option<Box<OutMessage<'static>>>>,
    /// Datagrams on their way into `sends` (empty between calls; kept for its room).
    owned: Vec<LentDatagram<'static>>,
    free_sends: Vec<usize>,
    /// Payloads of finished sends, for [`UringDriver::reclaim`].
    spent: Spent,
    offloads: Offloads,
    fixer: IcrcFixer,
    /// Waits of 100 ms `Drop` allows for the kernel to let go of every buffer.
    drop_waits: u32,
}

// SAFETY: the raw pointers inside (buffer ring, msghdrs) point only into memory this
// driver owns; nothing is shared with another thread, so moving the whole driver is fine.
unsafe impl Send for UringDriver {}

impl std::fmt::Debug for UringDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDriver")
            .field("local", &self.local)
            .field("recv_armed", &self.recv_armed)
            .finish()
    }
}

impl UringDriver {
    /// Opens a ring and binds the RoCEv2 socket. Fails where io_uring is missing or
    /// refused (old kernel, `kernel.io_uring_disabled`, seccomp): use the socket driver.
    pub fn bind(addr: SocketAddr) -> io::Result<UringDriver> {
        // Completions of receives are posted by task work on the arming thread; by
        // default a running thread is interrupted (an IPI, costly in a VM) to post them.
        // Cooperative task running posts them at its next kernel entry instead, and the
        // TASKRUN flag tells a polling thread when to enter (see `recv_batch`). Kernels
        // before 5.19 lack both: a plain ring then.
        let ring = match IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(1024)
        {
            Ok(ring) => ring,
            Err(_) => IoUring::new(1024)?,
        };
        let (socket, local, offloads) = bind_socket(addr)?;
        let buffers = BufferRing::new()?;
        // SAFETY: the entries stay allocated until after the ring is unregistered in Drop.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries_addr(),
                RECV_BUFFERS,
                BUFFER_GROUP,
                0,
            )?;
        }
        // SAFETY: msghdr is plain data; zero is a valid value.
        let mut recv_header: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        recv_header.msg_namelen = NAME_SPACE as libc::socklen_t;
        recv_header.msg_controllen = CMSG_SPACE;
        Ok(UringDriver {
            ring,
            socket,
            local,
            buffers,
            recv_header,
            recv_armed: false,
            recv_generation: 0,
            recv_owner: None,
            claimant: None,
            recv_retiring: 0,
            watching: None,
            sends: Vec::new(),
            owned: Vec::new(),
            free_sends: Vec::new(),
            spent: Spent::default(),
            offloads,
            fixer: IcrcFixer::default(),
            drop_waits: DROP_WAITS,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The ring's descriptor: it polls readable when completions wait (the receive is
    /// armed by `bind`'s first `recv_batch` or `wait`, and re-armed by `recv_batch`).
    pub fn ring_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer the entry names is owned by `self` until its completion.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_recv(&mut self) -> io::Result<()> {
        if !self.recv_armed {
            let entry = opcode::RecvMsgMulti::new(
                Fd(self.socket.as_raw_fd()),
                &*self.recv_header,
                BUFFER_GROUP,
            )
            .build()
            .user_data(RECV_TAG | self.recv_generation);
            self.push(&entry)?;
            self.recv_armed = true;
            self.recv_owner = Some(std::thread::current().id());
        }
        Ok(())
    }

    /// Makes the calling thread's next receiving round take the receive (the engine
    /// thread, which drives only when applications do not, claims it at once).
    pub fn claim_receive(&mut self) {
        let me = std::thread::current().id();
        if self.recv_owner != Some(me) {
            self.claimant = Some((me, CLAIM_ROUNDS - 1));
        }
    }

    /// Moves the receive to the calling thread once it has claimed it for
    /// [`CLAIM_ROUNDS`] rounds in a row (see the module comment).
    fn follow_driver(&mut self) -> io::Result<()> {
        let me = std::thread::current().id();
        if !self.recv_armed || self.recv_owner == Some(me) {
            self.claimant = None;
            return Ok(());
        }
        let streak = match self.claimant {
            Some((thread, streak)) if thread == me => streak + 1,
            _ => 1,
        };
        self.claimant = Some((me, streak));
        if streak < CLAIM_ROUNDS {
            return Ok(());
        }
        self.claimant = None;
        let cancel = opcode::AsyncCancel::new(RECV_TAG | self.recv_generation)
            .build()
            .user_data(CANCEL_TOKEN);
        self.push(&cancel)?;
        self.recv_retiring += 1;
        self.recv_armed = false;
        self.recv_generation = (self.recv_generation + 1) & !RECV_TAG;
        Ok(())
    }

    /// Whether a completion of a receive generation ends that receive: the current one
    /// is then no longer armed, a cancelled one has retired.
    fn receive_ended(&mut self, user_data: u64) {
        if user_data == RECV_TAG | self.recv_generation {
            self.recv_armed = false;
        } else {
            self.recv_retiring = self.recv_retiring.saturating_sub(1);
        }
    }

    /// Hands every datagram that has arrived to `each`, without blocking; also retires
    /// finished sends. Returns how many datagrams arrived.
    pub fn recv_batch(&mut self, mut each: impl FnMut(Received<'_>)) -> io::Result<usize> {
        self.follow_driver()?;
        self.arm_recv()?;
        // Enter the kernel only to submit, to run task work that completes receives
        // (the TASKRUN flag), or to flush completions the CQ had no room for.
        let pending = {
            let submission = self.ring.submission();
            !submission.is_empty() || submission.taskrun() || submission.cq_overflow()
        };
        if pending {
            self.ring.submit()?;
        }
        let mut received = 0;
        let completions: Vec<cqueue::Entry> = self.ring.completion().collect();
        for cqe in completions {
            match cqe.user_data() {
                token if token & RECV_TAG != 0 => {
                    if !cqueue::more(cqe.flags()) {
                        self.receive_ended(token);
                    }
                    let Some(bid) = cqueue::buffer_select(cqe.flags()) else {
                        // No buffer: an error such as ENOBUFS (all buffers busy). Re-arm.
                        if cqe.result() == -libc::ECANCELED
                            && token != RECV_TAG | self.recv_generation
                        {
                            // The receive `follow_driver` cancelled to re-arm it on the
                            // driving thread: expected, not a failure.
                            tracing::debug!(
                                "multishot recvmsg retired after moving to the driving thread"
                            );
                        } else if cqe.result() < 0 && cqe.result() != -libc::ENOBUFS {
                            tracing::warn!(error = %io::Error::from_raw_os_error(-cqe.result()), "multishot recvmsg failed");
                        }
                        continue;
                    };
                    let len = usize::try_from(cqe.result()).unwrap_or(0);
                    if let Ok(out) =
                        RecvMsgOut::parse(self.buffers.buffer(bid, len), &self.recv_header)
                    {
                        if let Some((meta, control)) = self.meta_of(&out) {
                            for payload in split_gro(out.payload_data(), control.gro_size) {
                                received += 1;
                                each(Received {
                                    meta,
                                    payload,
                                    truncated: out.is_payload_truncated(),
                                });
                            }
                        }
                    }
                    self.buffers.push(bid);
                }
                CANCEL_TOKEN => {}
                WATCH_TOKEN => {
                    if !cqueue::more(cqe.flags()) {
                        self.watching = None;
                    }
                }
                slot => {
                    let slot = slot as usize;
                    if cqe.result() < 0 {
                        tracing::debug!(error = %io::Error::from_raw_os_error(-cqe.result()), "send failed; RoCE will retransmit");
                    }
                    if let Some(done) = self.sends.get_mut(slot) {
                        if let Some(message) = done.take() {
                            self.spent.keep(message.into_payloads());
                        }
                        self.free_sends.push(slot);
                    }
                }
            }
        }
        if !self.recv_armed {
            self.arm_recv()?;
            self.ring.submit()?;
        }
        Ok(received)
    }

    fn meta_of(&self, out: &RecvMsgOut<'_>) -> Option<(DatagramMeta, Control)> {
        let name = out.name_data();
        let mut storage: libc::sockaddr_storage =
            // SAFETY: sockaddr_storage is plain data; zero is valid.
            unsafe { mem::zeroed() };
        let len = name.len().min(NAME_SPACE);
        // SAFETY: copying at most size_of::<sockaddr_storage>() bytes into it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                len,
            )
        };
        // SAFETY: `len` bytes of a socket address the kernel wrote.
        let src = unsafe { SockAddr::new(storage, len as libc::socklen_t) }.as_socket()?;
        let control = out.control_data();
        // SAFETY: msghdr is plain data; zero is valid.
        let mut header: libc::msghdr = unsafe { mem::zeroed() };
        header.msg_control = control.as_ptr() as *mut _;
        header.msg_controllen = control.len();
        let control = parse_control(&header, self.local.ip());
        let meta = DatagramMeta {
            src: src.ip(),
            dst: control.dst,
            src_port: src.port(),
            ecn: control.ecn,
            ipv4_ident: None,
        };
        Some((meta, control))
    }

    /// Queues datagrams (drained from `datagrams`) to port 4791 of their destinations,
    /// runs of equal-sized ones to one peer as a GSO send, and submits them in one system
    /// call. Returns how many were queued (all of them: the ring takes what it is given).
    pub fn send_batch(&mut self, datagrams: &mut Vec<LentDatagram<'_>>) -> io::Result<usize> {
        if datagrams.iter().any(|d| d.lent().is_some()) {
            // The ring may read a send's iovecs after `submit` returns (a full socket
            // buffer makes it wait for room), past the round the lent bytes are valid
            // for: these go out with `sendmmsg` instead, which has copied them when it
            // returns.
            let messages = gso::messages(datagrams, self.offloads.gso, &mut self.fixer);
            let fd = self.socket.as_raw_fd();
            return Ok(socket::send_now(fd, messages, &mut self.spent, datagrams));
        }
        // Nothing lent: each datagram is its own, and so may outlive the round in flight.
        let owned = datagrams.drain(..).map(|d| LentDatagram::from(d.own()));
        self.owned.extend(owned);
        let messages = gso::messages(&mut self.owned, self.offloads.gso, &mut self.fixer);
        let mut queued = 0;
        for message in messages {
            let slot = match self.free_sends.pop() {
                Some(slot) => slot,
                None => {
                    self.sends.push(None);
                    self.sends.len() - 1
                }
            };
            let entry = opcode::SendMsg::new(Fd(self.socket.as_raw_fd()), message.header())
                .build()
                .user_data(slot as u64);
            queued += message.len();
            // The slot keeps the message (and so everything its header points at) alive
            // until the send's completion frees it.
            self.sends[slot] = Some(message);
            self.push(&entry)?;
        }
        self.ring.submit()?;
        Ok(queued)
    }

    /// Hands the payloads of finished sends to `each` (the engine reuses them).
    pub fn reclaim(&mut self, each: impl FnMut(Vec<u8>)) {
        self.spent.reclaim(each);
    }

    /// Makes `fd` becoming readable post a completion (a multishot poll), so that
    /// [`RingSleeper::wait`] also wakes for it. Arm it from the thread that will wait:
    /// the poll's completions are posted by the arming thread.
    pub fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        if self.watching == Some(fd) {
            return Ok(());
        }
        let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WATCH_TOKEN);
        self.push(&entry)?;
        self.ring.submit()?;
        self.watching = Some(fd);
        Ok(())
    }

    /// What the engine thread sleeps on: the ring itself, with the timeout of the
    /// engine's next timer.
    pub fn sleeper(&self) -> RingSleeper {
        RingSleeper {
            fd: self.ring.as_raw_fd(),
        }
    }

    /// Blocks until a completion arrives (a datagram, a finished send) or `timeout` passes.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.arm_recv()?;
        let result = match timeout {
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::ETIME)
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// A wait on a ring from a thread that does not hold its driver: the timers of the engine
/// go through the ring as the timeout of `io_uring_enter`, and a datagram, a watched
/// descriptor or a finished send ends the wait.
#[derive(Debug, Clone, Copy)]
pub struct RingSleeper {
    fd: RawFd,
}

impl RingSleeper {
    /// Blocks until the ring holds a completion or `timeout` passes (`None`: no limit).
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<()> {
        /// `struct __kernel_timespec`.
        #[repr(C)]
        struct KernelTimespec {
            sec: i64,
            nsec: i64,
        }
        /// `struct io_uring_getevents_arg`.
        #[repr(C)]
        struct GeteventsArg {
            sigmask: u64,
            sigmask_size: u32,
            min_wait_usec: u32,
            timespec: u64,
        }
        const ENTER_GETEVENTS: u32 = 1;
        const ENTER_EXT_ARG: u32 = 8;
        let timespec = timeout.map(|t| KernelTimespec {
            sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            nsec: i64::from(t.subsec_nanos()),
        });
        let arg = GeteventsArg {
            sigmask: 0,
            sigmask_size: 0,
            min_wait_usec: 0,
            timespec: timespec
                .as_ref()
                .map_or(0, |t| t as *const KernelTimespec as u64),
        };
        // SAFETY: waits on a ring descriptor with no submission (`to_submit` 0), so the
        // kernel reads nothing from the submission queue the driver's holder may be
        // filling; `arg` and the timespec it points at live for the call. The caller
        // keeps the driver (and so the descriptor) alive while it waits.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                0u32,
                1u32,
                ENTER_GETEVENTS | ENTER_EXT_ARG,
                &arg as *const GeteventsArg,
                mem::size_of::<GeteventsArg>(),
            )
        };
        if rc < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => Ok(()),
                _ => Err(error),
            };
        }
        Ok(())
    }
}

impl UringDriver {
    /// Waits up to 100 ms for completions and retires them: the receive's last one,
    /// the cancel's, and sends' (whose messages are then freed).
    fn drain_for_drop(&mut self) {
        let ts = Timespec::new().nsec(100_000_000);
        let args = SubmitArgs::new().timespec(&ts);
        let _ = self.ring.submitter().submit_with_args(1, &args);
        let completions: Vec<cqueue::Entry> = self.ring.completion().collect();
        for cqe in completions {
            match cqe.user_data() {
                token if token & RECV_TAG != 0 => {
                    if !cqueue::more(cqe.flags()) {
                        self.receive_ended(token);
                    }
                }
                // Nothing to cancel: the receive had ended already.
                CANCEL_TOKEN if cqe.result() == -libc::ENOENT => {
                    self.recv_armed = false;
                    self.recv_retiring = 0;
                }
                CANCEL_TOKEN => {}
                slot => {
                    if let Some(send) = self.sends.get_mut(slot as usize) {
                        *send = None;
                    }
                }
            }
        }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Cancel the receive and wait until the kernel has let go of every buffer: the
        // receive's, and those of sends in flight (their messages live in `self.sends`).
        // Every completion is retired as it comes (a send's may arrive while we wait
        // for the receive's), and each wait is bounded, so drop cannot hang.
        if self.recv_armed {
            let cancel = opcode::AsyncCancel::new(RECV_TAG | self.recv_generation)
                .build()
                .user_data(CANCEL_TOKEN);
            if self.push(&cancel).is_err() {
                self.recv_armed = false;
            }
        }
        let released = |d: &UringDriver| {
            !d.recv_armed && d.recv_retiring == 0 && d.sends.iter().all(Option::is_none)
        };
        for _ in 0..self.drop_waits {
            if released(self) {
                break;
            }
            self.drain_for_drop();
        }
        if released(self) {
            let _ = self.ring.submitter().unregister_buf_ring(BUFFER_GROUP);
            return;
        }
        // The kernel may still write the receive buffers (a receive whose cancel never
        // completed) or read sends' messages: freeing them would hand it memory the
        // allocator gives to someone else. Leak them instead, and say so.
        let sends = self.sends.iter().flatten().count();
        tracing::warn!(
            receive = self.recv_armed || self.recv_retiring > 0,
            sends,
            "io_uring still holds buffers after {} ms; leaking them (~{} KiB)",
            u64::from(self.drop_waits) * 100,
            (BUFFER_LEN * RECV_BUFFERS as usize) >> 10,
        );
        self.buffers.leak = true;
        // SAFETY: msghdr is plain data; zero is a valid value.
        let header = mem::replace(&mut self.recv_header, Box::new(unsafe { mem::zeroed() }));
        Box::leak(header);
        self.sends.drain(..).flatten().for_each(|message| {
            Box::leak(message);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver dropped while the kernel still holds its receive (the ring kept alive by
    /// a second descriptor, and no wait allowed for the cancel) leaks its buffers: a
    /// datagram arriving afterwards lands in memory that is still allocated, not in
    /// memory the allocator may have given to someone else.
    #[test]
    fn drop_leaks_buffers_the_kernel_still_holds() {
        let Ok(mut driver) = UringDriver::bind("127.0.0.1:0".parse().unwrap()) else {
            eprintln!("io_uring unavailable; skipping");
            return;
        };
        let to = driver.local_addr();
        driver.recv_batch(|_| {}).unwrap();
        assert!(driver.recv_armed);
        // SAFETY: duplicates the ring's descriptor; closed below.
        let ring = unsafe { libc::dup(driver.ring_fd()) };
        assert!(ring >= 0);
        let buffers = driver.buffers.buffers;
        driver.drop_waits = 0;
        drop(driver);
        let marker = *b"the kernel still owns this buffer";
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&marker, to).unwrap();
        RingSleeper { fd: ring }
            .wait(Some(Duration::from_secs(5)))
            .unwrap();
        let mut seen = vec![0u8; BUFFER_LEN * RECV_BUFFERS as usize];
        // SAFETY: the buffers were leaked, so they are still allocated; the kernel has
        // posted the completion of its write, and nothing else is sent to the socket.
        unsafe { std::ptr::copy_nonoverlapping(buffers.as_ptr(), seen.as_mut_ptr(), seen.len()) };
        // SAFETY: the descriptor duplicated above; the ring ends with it.
        unsafe { libc::close(ring) };
        assert!(
            seen.windows(marker.len()).any(|w| w == marker),
            "the datagram went into the leaked receive buffers"
        );
    }
}
