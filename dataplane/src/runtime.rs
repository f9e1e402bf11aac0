//! The glommio shell: one executor per data-plane core (pinned when asked),
//! each with its own UDP socket, its [`Core`] and its ring link.
//!
//! The loop of core `i`:
//! 1. drain commands from the `CoreEnd` (`Shutdown` ends the loop);
//! 2. fire the core's timer when due;
//! 3. wait for a datagram at most until the next timer and at most ~1 ms (the
//!    ring has no doorbell, so it is polled; the wait is an io_uring receive,
//!    so an idle core sleeps), then drain what else is queued with
//!    non-blocking reads (up to [`RECV_BATCH`]);
//! 4. send what the core queued (non-blocking, falling back to an io_uring
//!    send when the socket buffer is full) and hand events to the ring; an
//!    event that does not fit is dropped and counted, the packet path never
//!    waits for the control plane.
//!
//! The non-blocking reads and writes are either one system call per datagram
//! (`recvfrom` / `sendto`) or batched (`recvmmsg` / `sendmmsg`), see [`UdpIo`];
//! docs/PERFORMANCE.md has the measurement behind the default.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::time::{Duration, Instant};

use glommio::net::UdpSocket;
use glommio::{CpuSet, ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use shared::ring::CoreEnd;
use shared::Command;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{debug, info, trace};

use crate::core::{Core, CoreConfig};

/// Socket buffer size asked for (the kernel caps it at `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 8 << 20;
/// Registered io_uring buffer memory per executor. The memlock limit may be
/// as low as 8 MiB for the whole process, and the data plane does its own
/// buffering, so this stays small.
const IO_MEMORY: usize = 256 << 10;
const RING_DEPTH: usize = 64;
/// Longest wait for a datagram before the command ring is looked at again.
const RING_POLL: Duration = Duration::from_millis(1);
/// Datagrams read without waiting after one arrived, before the loop goes
/// back to commands, timers and sends.
const RECV_BATCH: usize = 64;
/// Datagrams handed to the kernel per `sendmmsg`.
const SEND_BATCH: usize = 64;
/// Receive slot per datagram in the batched path. Media datagrams fit an MTU;
/// a longer one is truncated by the kernel and dropped.
const RECV_SLOT: usize = 2048;
/// Commands taken from the ring per turn of the loop.
const COMMAND_BATCH: usize = 256;
const MAX_DATAGRAM: usize = 65_536;

/// Settings of the data plane.
#[derive(Clone, Debug)]
pub struct DataPlaneConfig {
    /// Address every core's UDP socket binds to.
    pub listen_address: IpAddr,
    /// Core `i` listens on `base_port + i`. With 0 every core gets a port from
    /// the OS (see [`DataPlane::ports`]).
    pub base_port: u16,
    /// Number of data-plane cores (executors, sockets, ring links).
    pub cores: usize,
    /// Pin executor `i` to the `i`-th online CPU when it exists.
    pub pin: bool,
    pub consent_timeout: Duration,
}

/// How the loop moves datagrams between its socket and its core once one has
/// arrived (the wait for the first is an io_uring receive either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UdpIo {
    /// One `recvfrom` / `sendto` system call per datagram.
    PerDatagram,
    /// `recvmmsg` / `sendmmsg`: up to [`RECV_BATCH`] / [`SEND_BATCH`]
    /// datagrams per system call.
    #[default]
    Batched,
}

/// Why the data plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another process (or another core) holds the port: choose another
    /// `base_port` or stop the other process.
    #[error("cannot bind UDP {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// `start` needs exactly one ring link per core.
    #[error("{links} ring links given for {cores} cores")]
    LinkCount { cores: usize, links: usize },
    #[error("data plane needs at least one core")]
    NoCores,
    /// The executor could not be created; with io_uring this is usually the
    /// locked-memory limit (`ulimit -l`).
    #[error("cannot start the executor of core {core}: {reason}")]
    Executor { core: usize, reason: String },
}

/// An executor ended abnormally.
#[derive(Debug, thiserror::Error)]
#[error("data-plane core {core} failed: {reason}")]
pub struct JoinError {
    pub core: usize,
    pub reason: String,
}

/// The running data plane.
pub struct DataPlane {
    ports: Vec<u16>,
    handles: Vec<ExecutorJoinHandle<()>>,
}

/// Set when `start` fails half-way, to stop the executors it already started
/// (their control ends are still with the caller, who gets no `DataPlane`).
type AbortFlag = std::sync::Arc<std::sync::atomic::AtomicBool>;

impl DataPlane {
    /// The UDP port of each core, in core order.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.clone()
    }

    /// Waits for every core's loop to end (after `Command::Shutdown` on each
    /// link, or when a link's control end goes away).
    pub fn join(self) -> Result<(), JoinError> {
        let mut result = Ok(());
        for (core, handle) in self.handles.into_iter().enumerate() {
            if let Err(e) = handle.join() {
                if result.is_ok() {
                    result = Err(JoinError {
                        core,
                        reason: e.to_string(),
                    });
                }
            }
        }
        result
    }
}

/// Binds every core's socket, then starts one executor per core. Returns once
/// every executor runs; a failure stops the ones already started.
pub fn start(config: DataPlaneConfig, links: Vec<CoreEnd>) -> Result<DataPlane, StartError> {
    start_with_io(config, links, UdpIo::default())
}

/// [`start`] with a chosen socket I/O strategy (benchmarks compare them).
pub fn start_with_io(
    config: DataPlaneConfig,
    links: Vec<CoreEnd>,
    io: UdpIo,
) -> Result<DataPlane, StartError> {
    if config.cores == 0 {
        return Err(StartError::NoCores);
    }
    if links.len() != config.cores {
        return Err(StartError::LinkCount {
            cores: config.cores,
            links: links.len(),
        });
    }
    let mut sockets = Vec::with_capacity(config.cores);
    let mut ports = Vec::with_capacity(config.cores);
    for i in 0..config.cores {
        let port = if config.base_port == 0 {
            0
        } else {
            config
                .base_port
                .checked_add(i as u16)
                .ok_or_else(|| StartError::Bind {
                    address: SocketAddr::new(config.listen_address, config.base_port),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "port out of range"),
                })?
        };
        let address = SocketAddr::new(config.listen_address, port);
        let socket = bind(address).map_err(|source| StartError::Bind { address, source })?;
        let local = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map_or(port, |a| a.port());
        ports.push(local);
        sockets.push(socket);
    }
    let cpus: Vec<usize> = if config.pin {
        CpuSet::online()
            .map(|set| set.into_iter().map(|l| l.cpu).collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };

    let abort = AbortFlag::default();
    let mut handles: Vec<ExecutorJoinHandle<()>> = Vec::with_capacity(config.cores);
    let mut links = links.into_iter();
    for (i, socket) in sockets.into_iter().enumerate() {
        let link = links.next().expect("one link per core, checked above");
        let placement = match cpus.get(i) {
            Some(&cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        };
        let core_config = CoreConfig {
            consent_timeout: config.consent_timeout,
            ..CoreConfig::default()
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let abort_flag = abort.clone();
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("dataplane-{i}"))
            .io_memory(IO_MEMORY)
            .ring_depth(RING_DEPTH)
            .spawn(move || async move {
                let _ = ready_tx.send(());
                run(i as u16, socket, link, core_config, abort_flag, io).await;
            });
        let failure = match spawned {
            Ok(handle) => {
                if ready_rx.recv().is_ok() {
                    handles.push(handle);
                    continue;
                }
                // The thread ended before the loop started: executor setup failed.
                match handle.join() {
                    Err(e) => e.to_string(),
                    Ok(()) => "executor exited during start".to_owned(),
                }
            }
            Err(e) => e.to_string(),
        };
        abort.store(true, std::sync::atomic::Ordering::Relaxed);
        for handle in handles {
            let _ = handle.join();
        }
        return Err(StartError::Executor {
            core: i,
            reason: failure,
        });
    }
    info!(ports = ?ports, pinned = !cpus.is_empty(), ?io, "data plane started");
    Ok(DataPlane { ports, handles })
}

fn bind(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // Buffer sizes are best effort: the kernel caps them silently.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    if address.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.bind(&address.into())?;
    Ok(socket)
}

/// The loop of one data-plane core.
async fn run(
    index: u16,
    socket: Socket,
    mut link: CoreEnd,
    config: CoreConfig,
    abort: AbortFlag,
    io: UdpIo,
) {
    // The socket2 handle does the non-blocking reads and writes; the glommio
    // socket (a dup of the same file) waits through io_uring when idle.
    let waiter = match socket.try_clone() {
        // SAFETY: `into_raw_fd` hands over sole ownership of a valid, open
        // UDP socket descriptor; glommio's socket takes it over.
        // (glommio links its own socket2 version, so `From<Socket>` does not apply.)
        Ok(dup) => unsafe { UdpSocket::from_raw_fd(dup.into_raw_fd()) },
        Err(e) => {
            tracing::error!(core = index, error = %e, "cannot duplicate the socket");
            return;
        }
    };
    let mut core = Core::new(index, config);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut batch = match io {
        UdpIo::PerDatagram => None,
        UdpIo::Batched => Some((RecvBatch::new(), SendBatch::new())),
    };
    debug!(core = index, ?io, "data-plane loop running");
    loop {
        if drain_commands(&mut core, &mut link) || abort.load(std::sync::atomic::Ordering::Relaxed)
        {
            break;
        }
        let now = Instant::now();
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
        }
        match batch.as_mut() {
            None => flush(&mut core, &socket, &waiter, &mut link).await,
            Some((_, tx)) => flush_batched(&mut core, tx, &socket, &waiter, &mut link).await,
        }

        let wait = core
            .poll_timeout()
            .map_or(RING_POLL, |t| t.saturating_duration_since(Instant::now()))
            .clamp(Duration::from_micros(10), RING_POLL);
        let _ = waiter.set_read_timeout(Some(wait));
        match waiter.recv_from(&mut buf).await {
            Ok((n, from)) => {
                core.handle_datagram(Instant::now(), from, &mut buf[..n]);
                match batch.as_mut() {
                    None => {
                        for _ in 0..RECV_BATCH {
                            match try_recv(&socket, &mut buf) {
                                Some((n, from)) => {
                                    core.handle_datagram(Instant::now(), from, &mut buf[..n])
                                }
                                None => break,
                            }
                        }
                    }
                    Some((rx, _)) => {
                        let got = rx.recv(socket.as_raw_fd(), RECV_BATCH);
                        let now = Instant::now();
                        for i in 0..got {
                            if let Some((from, pkt)) = rx.datagram(i) {
                                core.handle_datagram(now, from, pkt);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let e: io::Error = e.into();
                if !matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) {
                    trace!(core = index, error = %e, "recv failed");
                }
            }
        }
        match batch.as_mut() {
            None => flush(&mut core, &socket, &waiter, &mut link).await,
            Some((_, tx)) => flush_batched(&mut core, tx, &socket, &waiter, &mut link).await,
        }
    }
    debug!(core = index, "data-plane loop stopped");
}

/// Feeds queued commands to the core; true on `Shutdown`.
fn drain_commands(core: &mut Core, link: &mut CoreEnd) -> bool {
    for _ in 0..COMMAND_BATCH {
        match link.recv() {
            None => return false,
            Some(Ok(Command::Shutdown)) => return true,
            Some(Ok(cmd)) => core.handle_command(Instant::now(), cmd),
            Some(Err(e)) => {
                trace!(error = %e, "undecodable command");
                core.count_bad_command();
            }
        }
    }
    false
}

/// Sends every queued datagram and hands every event to the ring.
async fn flush(core: &mut Core, socket: &Socket, waiter: &UdpSocket, link: &mut CoreEnd) {
    while let Some(t) = core.poll_transmit() {
        let dest = SockAddr::from(t.destination);
        match socket.send_to_with_flags(t.contents, &dest, libc::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = waiter.send_to(t.contents, t.destination).await {
                    trace!(error = %e, "send failed");
                }
            }
            Err(e) => trace!(error = %e, dest = %t.destination, "send failed"),
        }
    }
    drain_events(core, link);
}

/// Hands every event to the ring.
fn drain_events(core: &mut Core, link: &mut CoreEnd) {
    while let Some(ev) = core.poll_event() {
        if link.send(&ev).is_err() {
            core.count_dropped_event();
        }
    }
}

/// [`flush`] with `sendmmsg`: the queued datagrams are copied into `tx` (the
/// core hands them out one at a time) and sent [`SEND_BATCH`] per call.
async fn flush_batched(
    core: &mut Core,
    tx: &mut SendBatch,
    socket: &Socket,
    waiter: &UdpSocket,
    link: &mut CoreEnd,
) {
    loop {
        tx.clear();
        while tx.len() < SEND_BATCH {
            match core.poll_transmit() {
                Some(t) => tx.push(t.destination, t.contents),
                None => break,
            }
        }
        if tx.len() == 0 {
            break;
        }
        let mut next = 0;
        while next < tx.len() {
            match tx.send(socket.as_raw_fd(), next) {
                Ok(sent) => next += sent,
                Err(e) => {
                    let (dest, contents) = tx.get(next);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        // The socket buffer is full: wait for room through
                        // io_uring with this datagram, then batch again.
                        if let Err(e) = waiter.send_to(contents, dest).await {
                            trace!(error = %e, "send failed");
                        }
                    } else {
                        // Only the first datagram of a call reports its error.
                        trace!(error = %e, dest = %dest, "send failed");
                    }
                    next += 1;
                }
            }
        }
    }
    drain_events(core, link);
}

/// Receive slots and headers for `recvmmsg`, reused by every call.
struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    fn new() -> Self {
        // SAFETY: all-zero bytes are valid values of these plain C structs.
        let zeroed_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zeroed_msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
        RecvBatch {
            bufs: vec![0; RECV_BATCH * RECV_SLOT],
            addrs: vec![zeroed_addr; RECV_BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                RECV_BATCH
            ],
            msgs: vec![zeroed_msg; RECV_BATCH],
        }
    }

    /// Reads up to `max` queued datagrams without waiting; returns how many.
    fn recv(&mut self, fd: RawFd, max: usize) -> usize {
        let n = max.min(RECV_BATCH);
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * RECV_SLOT..].as_mut_ptr().cast(),
                iov_len: RECV_SLOT,
            };
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        // SAFETY: `msgs[..n]` point at `n` live iovecs, slots of `RECV_SLOT`
        // bytes and address buffers of the advertised lengths, all owned by
        // `self` and not moved during the call.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        usize::try_from(got).unwrap_or(0)
    }

    /// The `i`-th datagram of the last [`recv`](Self::recv); `None` when it
    /// was truncated or its source is not an IP address.
    fn datagram(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8])> {
        let msg = &self.msgs[i];
        if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            trace!("datagram longer than {RECV_SLOT} bytes dropped");
            return None;
        }
        let len = (msg.msg_len as usize).min(RECV_SLOT);
        let from = socket_addr(&self.addrs[i], msg.msg_hdr.msg_namelen)?;
        Some((from, &mut self.bufs[i * RECV_SLOT..i * RECV_SLOT + len]))
    }
}

/// The IP address and port the kernel wrote into `storage`.
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, the
            // length says it was written, and the storage is large and
            // aligned enough for any socket address.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Datagrams staged for `sendmmsg`: contents packed in one buffer.
struct SendBatch {
    data: Vec<u8>,
    items: Vec<(SocketAddr, SockAddr, usize, usize)>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    fn new() -> Self {
        SendBatch {
            data: Vec::with_capacity(SEND_BATCH * 1500),
            items: Vec::with_capacity(SEND_BATCH),
            iovs: Vec::with_capacity(SEND_BATCH),
            msgs: Vec::with_capacity(SEND_BATCH),
        }
    }

    fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn push(&mut self, dest: SocketAddr, contents: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(contents);
        self.items
            .push((dest, SockAddr::from(dest), start, contents.len()));
    }

    fn get(&self, i: usize) -> (SocketAddr, &[u8]) {
        let (dest, _, start, len) = &self.items[i];
        (*dest, &self.data[*start..*start + *len])
    }

    /// Sends the staged datagrams from `from` on without waiting; returns how
    /// many the kernel took (at least one), or the error of the first.
    fn send(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        self.iovs.clear();
        self.msgs.clear();
        let base = self.data.as_mut_ptr();
        for (_, addr, start, len) in &self.items[from..] {
            self.iovs.push(libc::iovec {
                // SAFETY: `start` is within `data` (pushed above).
                iov_base: unsafe { base.add(*start) }.cast(),
                iov_len: *len,
            });
            // SAFETY: all-zero bytes are a valid `mmsghdr`.
            let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
            msg.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            msg.msg_hdr.msg_namelen = addr.len();
            msg.msg_hdr.msg_iovlen = 1;
            self.msgs.push(msg);
        }
        // The iovec vector no longer grows: its addresses are now stable.
        for (msg, iov) in self.msgs.iter_mut().zip(self.iovs.iter_mut()) {
            msg.msg_hdr.msg_iov = iov;
        }
        // SAFETY: every header points at a live iovec, address and slice of
        // `data`, all owned by `self` and unchanged during the call; the
        // kernel only reads them (and writes `msg_len`).
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(sent) {
            Ok(n) if n > 0 => Ok(n),
            Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }
}

/// One datagram if one is queued, without waiting.
fn try_recv(socket: &Socket, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and recv only writes
    // initialised bytes into the buffer, so it stays initialised.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    let (n, from) = socket
        .recv_from_with_flags(uninit, libc::MSG_DONTWAIT)
        .ok()?;
    Some((n, from.as_socket()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ring::core_link;
    use shared::{ChannelKey, ConnId, Event};
    use std::net::UdpSocket as StdUdpSocket;

    use crate::stun;

    fn config(cores: usize, base_port: u16) -> DataPlaneConfig {
        DataPlaneConfig {
            listen_address: "127.0.0.1".parse().unwrap(),
            base_port,
            cores,
            pin: true,
            consent_timeout: Duration::from_secs(30),
        }
    }

    /// Retries `f` until it yields something or the deadline passes.
    fn until<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Some(v) = f() {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    #[test]
    fn two_cores_answer_stun_and_shut_down() {
        let mut controls = Vec::new();
        let mut cores = Vec::new();
        for _ in 0..2 {
            let (control, core) = core_link(64 << 10).unwrap();
            controls.push(control);
            cores.push(core);
        }
        let dp = start(config(2, 0), cores).expect("two executors start");
        let ports = dp.ports();
        assert_eq!(ports.len(), 2);
        assert!(ports.iter().all(|p| *p != 0));

        let client = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        for (i, control) in controls.iter_mut().enumerate() {
            control
                .send(&Command::AddConnection {
                    conn: ConnId(i as u32),
                    channel: ChannelKey(1),
                    local_ufrag: format!("u{i}"),
                    local_pwd: format!("p{i}-0123456789abcdef"),
                    send: true,
                    recv: true,
                })
                .unwrap();
            let mut req = Vec::new();
            let user = format!("u{i}:remote");
            let pwd = format!("p{i}-0123456789abcdef");
            stun::write_binding_request(&mut req, &[9; 12], user.as_bytes(), pwd.as_bytes(), true);
            let server = SocketAddr::from(([127, 0, 0, 1], ports[i]));
            let mut buf = [0u8; 1500];
            // The command may still be in the ring when the first check
            // arrives: retry the check until answered.
            let resp = until(Duration::from_secs(5), || {
                client.send_to(&req, server).unwrap();
                let (n, from) = client.recv_from(&mut buf).ok()?;
                (from == server).then(|| buf[..n].to_vec())
            })
            .expect("binding response");
            let msg = stun::StunMessage::parse(&resp).unwrap();
            assert_eq!(msg.message_type, stun::BINDING_SUCCESS);
            msg.verify_integrity(pwd.as_bytes()).unwrap();
            assert_eq!(
                stun::xor_mapped_address(&resp),
                Some(client.local_addr().unwrap())
            );
            let selected = until(Duration::from_secs(5), || loop {
                match control.recv()? {
                    Ok(Event::IceSelected { conn, peer }) => return Some((conn, peer)),
                    _ => continue,
                }
            });
            assert_eq!(
                selected,
                Some((ConnId(i as u32), client.local_addr().unwrap()))
            );
        }
        for control in &mut controls {
            control.send(&Command::Shutdown).unwrap();
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || done_tx.send(dp.join()));
        let joined = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("executors stop after Shutdown");
        joined.unwrap();
    }

    #[test]
    fn port_in_use_is_named() {
        let taken = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let (_control, core) = core_link(4096).unwrap();
        let err = match start(config(1, port), vec![core]) {
            Err(e) => e,
            Ok(_) => panic!("bind should fail"),
        };
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(matches!(err, StartError::Bind { .. }));
    }

    #[test]
    fn link_count_must_match() {
        let err = start(config(2, 0), Vec::new()).err().unwrap();
        assert!(matches!(err, StartError::LinkCount { cores: 2, links: 0 }));
    }
}
