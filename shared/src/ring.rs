//! Single-producer single-consumer byte-record rings in a shared memory mapping
//! (memfd + mmap), one pair (commands down, events up) per data-plane core.
//!
//! Each ring is one mapping:
//!
//! ```text
//!  offset 0    magic "SORARING" (u64), ring layout version (u64), capacity (u64)
//!  offset 128  head: AtomicU64, bytes consumed so far   (written by the consumer)
//!  offset 256  tail: AtomicU64, bytes produced so far   (written by the producer)
//!  offset 384  data area, `capacity` bytes
//! ```
//!
//! `head` and `tail` only grow; a position's place in the data area is
//! `position % capacity`. They sit 128 bytes apart so that the two sides never
//! write the same cache line (nor its prefetch neighbour). A record is
//! `[u32 len (LE)][len bytes]`, padded to 8 bytes. A record that does not fit
//! before the end of the data area is written at its start instead, after a
//! wrap marker (`len == u32::MAX`) that tells the consumer to skip the rest.
//! The mapping holds no pointers, only these offsets and bytes.
//!
//! The producer writes a record, then publishes `tail` with `Release`; the
//! consumer reads `tail` with `Acquire`, reads the record, then publishes
//! `head` with `Release`, which the producer reads with `Acquire` before it
//! reuses the space. Each side caches the other's counter and reloads it only
//! when the cached value says the ring is empty (consumer) or full (producer).
//!
//! A record of at most [`ControlEnd::max_record_len`] bytes (half the ring,
//! minus framing) always fits into an empty ring. Larger records are refused
//! with [`RingFull`] every time.

use std::fmt;
use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::msg::{Command, DecodeError, Event};

/// The ring has no room for the record now; retry later (nothing was written).
///
/// A record longer than [`ControlEnd::max_record_len`] never fits, however
/// empty the ring is: it gets this error every time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ring full ({needed} bytes needed)")]
pub struct RingFull {
    /// Ring bytes the record needs: its framed, padded size, plus the bytes
    /// skipped at the end of the data area when it has to wrap.
    pub needed: usize,
}

/// Smallest data area of a ring, in bytes.
pub const MIN_RING_CAPACITY: usize = 64;
/// Largest data area of a ring, in bytes.
pub const MAX_RING_CAPACITY: usize = 1 << 32;

/// What [`ControlEnd::recv`] and [`CoreEnd::recv`] return when the ring's own
/// framing is inconsistent (a record length that runs past what was produced).
/// That only happens if the mapping was overwritten; every pending record is
/// discarded and the ring goes on from the producer's position.
pub const CORRUPT_FRAMING: DecodeError = DecodeError::InvalidField("ring framing");

const MAGIC: u64 = u64::from_le_bytes(*b"SORARING");
const RING_LAYOUT_VERSION: u64 = 1;
const CACHE_LINE: usize = 128;
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 8;
const CAPACITY_AT: usize = 16;
const HEAD_AT: usize = CACHE_LINE;
const TAIL_AT: usize = 2 * CACHE_LINE;
const HEADER_LEN: usize = 3 * CACHE_LINE;

const LEN_FIELD: usize = 4;
const ALIGN: usize = 8;
const WRAP_MARKER: u32 = u32::MAX;

/// Creates one command ring and one event ring of `capacity` bytes each.
///
/// `capacity` is rounded up to a multiple of 8 and must lie within
/// [`MIN_RING_CAPACITY`]`..=`[`MAX_RING_CAPACITY`]; otherwise the error is
/// `InvalidInput`. The mappings are freed when both ends are dropped.
pub fn core_link(capacity: usize) -> std::io::Result<(ControlEnd, CoreEnd)> {
    let capacity = data_capacity(capacity)?;
    let commands = Ring::new(capacity)?;
    let events = Ring::new(capacity)?;
    let control = ControlEnd {
        commands: Producer::new(Arc::clone(&commands)),
        events: Consumer::new(Arc::clone(&events)),
        scratch: Vec::with_capacity(SCRATCH_START),
    };
    let core = CoreEnd {
        commands: Consumer::new(commands),
        events: Producer::new(events),
        scratch: Vec::with_capacity(SCRATCH_START),
    };
    Ok((control, core))
}

/// Initial size of an end's encoding buffer; it grows to the largest message
/// sent and then stays.
const SCRATCH_START: usize = 2048;

/// The control plane's end: sends commands, receives events. `Send`.
pub struct ControlEnd {
    commands: Producer,
    events: Consumer,
    scratch: Vec<u8>,
}

/// A data-plane core's end: receives commands, sends events. `Send`.
pub struct CoreEnd {
    commands: Consumer,
    events: Producer,
    scratch: Vec<u8>,
}

impl ControlEnd {
    /// Queues `cmd` for the core, or returns [`RingFull`] having written
    /// nothing: the caller keeps the command and retries later.
    ///
    /// # Panics
    ///
    /// As [`Command::encode`]: if a field is longer than
    /// [`crate::MAX_FIELD_LEN`].
    pub fn send(&mut self, cmd: &Command) -> Result<(), RingFull> {
        self.scratch.clear();
        cmd.encode(&mut self.scratch);
        self.commands.push(&self.scratch)
    }

    /// The next event, `None` if there is none now, or the error of a record
    /// that does not decode (the record is consumed either way).
    pub fn recv(&mut self) -> Option<Result<Event, DecodeError>> {
        self.events.pop_with(Event::decode).map(Result::flatten)
    }

    /// Hands the next event's raw record (`[version][tag][payload]`) to `f`
    /// and consumes it. `Some(Err(CORRUPT_FRAMING))` if the ring's framing is
    /// broken.
    pub fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<Result<R, DecodeError>> {
        self.events.pop_with(f)
    }

    /// Decodes up to `max` pending events into `f`, releasing their ring space
    /// once at the end. Returns how many records were consumed.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(Result<Event, DecodeError>)) -> usize {
        self.events
            .drain_with(max, |record| f(record.and_then(Event::decode)))
    }

    /// Bytes in the data area of each of the two rings.
    pub fn capacity(&self) -> usize {
        self.commands.ring.capacity
    }

    /// Longest record (encoded message) a ring accepts; see [`RingFull`].
    pub fn max_record_len(&self) -> usize {
        self.commands.ring.max_record_len()
    }
}

impl CoreEnd {
    /// The next command, `None` if there is none now, or the error of a
    /// record that does not decode (the record is consumed either way).
    pub fn recv(&mut self) -> Option<Result<Command, DecodeError>> {
        self.commands.pop_with(Command::decode).map(Result::flatten)
    }

    /// Queues `ev` for the control plane, or returns [`RingFull`] having
    /// written nothing. Whether the event may then be dropped is said on each
    /// [`Event`] variant.
    ///
    /// # Panics
    ///
    /// As [`Event::encode`]: if a field is longer than
    /// [`crate::MAX_FIELD_LEN`].
    pub fn send(&mut self, ev: &Event) -> Result<(), RingFull> {
        self.scratch.clear();
        ev.encode(&mut self.scratch);
        self.events.push(&self.scratch)
    }

    /// Hands the next command's raw record (`[version][tag][payload]`) to `f`
    /// and consumes it. `Some(Err(CORRUPT_FRAMING))` if the ring's framing is
    /// broken.
    pub fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<Result<R, DecodeError>> {
        self.commands.pop_with(f)
    }

    /// Decodes up to `max` pending commands into `f`, releasing their ring
    /// space once at the end. Returns how many records were consumed.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(Result<Command, DecodeError>)) -> usize {
        self.commands
            .drain_with(max, |record| f(record.and_then(Command::decode)))
    }

    /// Bytes in the data area of each of the two rings.
    pub fn capacity(&self) -> usize {
        self.commands.ring.capacity
    }

    /// Longest record (encoded message) a ring accepts; see [`RingFull`].
    pub fn max_record_len(&self) -> usize {
        self.commands.ring.max_record_len()
    }
}

impl fmt::Debug for ControlEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlEnd")
            .field("capacity", &self.capacity())
            .field("commands_produced", &self.commands.tail)
            .field("events_consumed", &self.events.head)
            .finish()
    }
}

impl fmt::Debug for CoreEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoreEnd")
            .field("capacity", &self.capacity())
            .field("commands_consumed", &self.commands.head)
            .field("events_produced", &self.events.tail)
            .finish()
    }
}

fn data_capacity(requested: usize) -> io::Result<usize> {
    requested
        .checked_next_multiple_of(ALIGN)
        .filter(|c| (MIN_RING_CAPACITY..=MAX_RING_CAPACITY).contains(c))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "ring capacity {requested} is outside \
                     {MIN_RING_CAPACITY}..={MAX_RING_CAPACITY} bytes"
                ),
            )
        })
}

/// Ring bytes taken by a record of `len` bytes: length field plus padding.
fn slot_len(len: usize) -> usize {
    (LEN_FIELD + len).next_multiple_of(ALIGN)
}

/// A `MAP_SHARED` read-write mapping, unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value. Everything that
// touches it concurrently goes through atomics (the header words) or through
// the ring protocol, which gives each data byte to one side at a time.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the base pointer and the length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A memfd-backed mapping, or an anonymous shared one where memfd is not
    /// available (old kernels, seccomp filters).
    fn new(len: usize) -> io::Result<Mapping> {
        Self::memfd(len).or_else(|_| Self::anonymous(len))
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn memfd(len: usize) -> io::Result<Mapping> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

        // SAFETY: the name is a NUL-terminated string that outlives the call.
        let fd = unsafe { libc::memfd_create(c"sora-ring".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ring too large"))?;
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The mapping keeps the memory alive after `fd` is closed at return.
        Self::map(len, libc::MAP_SHARED, fd.as_raw_fd())
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn memfd(_len: usize) -> io::Result<Mapping> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn anonymous(len: usize) -> io::Result<Mapping> {
        Self::map(len, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1)
    }

    fn map(len: usize, flags: libc::c_int, fd: libc::c_int) -> io::Result<Mapping> {
        // SAFETY: a new mapping at an address the kernel chooses; no existing
        // memory is affected. Fresh pages are zero-filled.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { base, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are exactly what mmap returned, and this is
        // the last owner: no reference into the mapping outlives it.
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        debug_assert_eq!(rc, 0, "munmap: {}", io::Error::last_os_error());
    }
}

/// One ring: its mapping and data-area size. Shared by its producer and its
/// consumer through an `Arc`; the mapping goes when both are dropped.
struct Ring {
    map: Mapping,
    capacity: usize,
}

impl Ring {
    fn new(capacity: usize) -> io::Result<Arc<Ring>> {
        Ok(Self::with_mapping(
            Mapping::new(HEADER_LEN + capacity)?,
            capacity,
        ))
    }

    /// `capacity` must come from [`data_capacity`] and `map` must be a fresh,
    /// zero-filled mapping of `HEADER_LEN + capacity` bytes.
    fn with_mapping(map: Mapping, capacity: usize) -> Arc<Ring> {
        assert!(
            map.len == HEADER_LEN + capacity
                && capacity.is_multiple_of(ALIGN)
                && capacity >= MIN_RING_CAPACITY,
            "ring mapping of {} bytes for capacity {capacity}",
            map.len
        );
        let ring = Ring { map, capacity };
        ring.word(MAGIC_AT).store(MAGIC, Ordering::Relaxed);
        ring.word(VERSION_AT)
            .store(RING_LAYOUT_VERSION, Ordering::Relaxed);
        ring.word(CAPACITY_AT)
            .store(capacity as u64, Ordering::Relaxed);
        // head and tail start at 0: the mapping is zero-filled.
        Arc::new(ring)
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at.is_multiple_of(8) && at + 8 <= HEADER_LEN);
        // SAFETY: `at` is a fixed 8-aligned offset inside the header of a
        // page-aligned mapping that lives as long as `self`. AtomicU64 has the
        // layout of u64, and header words are only ever accessed atomically.
        unsafe { &*self.map.base.as_ptr().add(at).cast::<AtomicU64>() }
    }

    fn head(&self) -> &AtomicU64 {
        self.word(HEAD_AT)
    }

    fn tail(&self) -> &AtomicU64 {
        self.word(TAIL_AT)
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the mapping is HEADER_LEN + capacity bytes long.
        unsafe { self.map.base.as_ptr().add(HEADER_LEN) }
    }

    /// Longest record that always fits into the empty ring: its slot is at
    /// most half the ring, so either it fits before the end or the bytes
    /// skipped at the end are fewer than half the ring.
    fn max_record_len(&self) -> usize {
        (self.capacity / 2) / ALIGN * ALIGN - LEN_FIELD
    }
}

/// The writing side of a ring.
struct Producer {
    ring: Arc<Ring>,
    /// Bytes produced so far (what `tail` holds once published).
    tail: u64,
    /// `tail % capacity`, kept to avoid a division per record.
    off: usize,
    /// The consumer's `head` as last read; the real one is never behind it.
    head_seen: u64,
}

impl Producer {
    fn new(ring: Arc<Ring>) -> Producer {
        let tail = ring.tail().load(Ordering::Relaxed);
        let head_seen = ring.head().load(Ordering::Acquire);
        let off = (tail % ring.capacity as u64) as usize;
        Producer {
            ring,
            tail,
            off,
            head_seen,
        }
    }

    fn free(&self) -> usize {
        // At most `capacity` bytes are in flight; a `head` that says otherwise
        // (a mapping overwritten from outside) reads as a full ring.
        let used = self.tail.wrapping_sub(self.head_seen);
        (self.ring.capacity as u64).saturating_sub(used) as usize
    }

    /// Appends one record and publishes it, or writes nothing.
    fn push(&mut self, record: &[u8]) -> Result<(), RingFull> {
        let cap = self.ring.capacity;
        let slot = slot_len(record.len());
        if record.len() > self.ring.max_record_len() {
            return Err(RingFull { needed: slot });
        }
        let room_to_end = cap - self.off;
        let wraps = slot > room_to_end;
        let needed = if wraps { room_to_end + slot } else { slot };
        if self.free() < needed {
            self.head_seen = self.ring.head().load(Ordering::Acquire);
            if self.free() < needed {
                return Err(RingFull { needed });
            }
        }
        let data = self.ring.data();
        let mut at = self.off;
        // SAFETY: `needed` bytes from `off` (wrapping to 0) are free: the
        // consumer has released them (Acquire load of `head` above) and will
        // not read them before the Release store of `tail` below. `at` is
        // 8-aligned and below `cap`, so a u32 fits there; after a wrap the
        // record's `slot <= cap / 2` bytes fit from 0.
        unsafe {
            if wraps {
                data.add(at).cast::<u32>().write(WRAP_MARKER.to_le());
                at = 0;
            }
            // len <= max_record_len < u32::MAX.
            let len = record.len() as u32;
            data.add(at).cast::<u32>().write(len.to_le());
            ptr::copy_nonoverlapping(record.as_ptr(), data.add(at + LEN_FIELD), record.len());
        }
        self.off = at + slot;
        if self.off == cap {
            self.off = 0;
        }
        self.tail += needed as u64;
        self.ring.tail().store(self.tail, Ordering::Release);
        Ok(())
    }
}

/// The reading side of a ring.
struct Consumer {
    ring: Arc<Ring>,
    /// Bytes consumed so far; published to `head` after each record or batch.
    head: u64,
    /// `head % capacity`.
    off: usize,
    /// The producer's `tail` as last read; the real one is never behind it.
    tail_seen: u64,
}

/// Where the next record is, if any.
enum Next {
    Empty,
    Record { at: usize, len: usize, slot: usize },
    Corrupt,
}

impl Consumer {
    fn new(ring: Arc<Ring>) -> Consumer {
        let head = ring.head().load(Ordering::Relaxed);
        let tail_seen = ring.tail().load(Ordering::Acquire);
        let off = (head % ring.capacity as u64) as usize;
        Consumer {
            ring,
            head,
            off,
            tail_seen,
        }
    }

    /// Finds the next record, stepping over a wrap marker (locally: `head` is
    /// published with the record that follows it).
    fn next(&mut self) -> Next {
        if self.head == self.tail_seen {
            self.tail_seen = self.ring.tail().load(Ordering::Acquire);
            if self.head == self.tail_seen {
                return Next::Empty;
            }
        }
        let cap = self.ring.capacity;
        let mut avail = match usize::try_from(self.tail_seen.wrapping_sub(self.head)) {
            Ok(n) if n <= cap => n,
            _ => return Next::Corrupt,
        };
        let mut len = self.read_len();
        if len == WRAP_MARKER {
            let skip = cap - self.off;
            // The producer publishes a marker together with the record after it.
            if skip >= avail {
                return Next::Corrupt;
            }
            self.head += skip as u64;
            self.off = 0;
            avail -= skip;
            len = self.read_len();
        }
        let len = len as usize;
        let slot = slot_len(len);
        if len > self.ring.max_record_len() || slot > avail || self.off + slot > cap {
            return Next::Corrupt;
        }
        Next::Record {
            at: self.off + LEN_FIELD,
            len,
            slot,
        }
    }

    fn read_len(&self) -> u32 {
        // SAFETY: `off` is 8-aligned and below `capacity`, so 4 bytes fit; the
        // producer published them before the `tail` we loaded with Acquire.
        u32::from_le(unsafe { self.ring.data().add(self.off).cast::<u32>().read() })
    }

    /// The record found by `next`. Only valid until the record is consumed.
    fn record(&self, at: usize, len: usize) -> &[u8] {
        // SAFETY: `next` checked that `at - 4 + slot <= capacity` and that the
        // bytes were published; the producer does not touch them before
        // `head` moves past them, which needs `&mut self`.
        unsafe { std::slice::from_raw_parts(self.ring.data().add(at), len) }
    }

    fn consume(&mut self, slot: usize) {
        self.head += slot as u64;
        self.off += slot;
        if self.off == self.ring.capacity {
            self.off = 0;
        }
    }

    fn publish(&self) {
        self.ring.head().store(self.head, Ordering::Release);
    }

    /// Drops everything produced so far; used when the framing is broken.
    fn discard_all(&mut self) {
        self.head = self.tail_seen;
        self.off = (self.head % self.ring.capacity as u64) as usize;
        self.publish();
    }

    fn pop_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<Result<R, DecodeError>> {
        match self.next() {
            Next::Empty => None,
            Next::Corrupt => {
                self.discard_all();
                Some(Err(CORRUPT_FRAMING))
            }
            Next::Record { at, len, slot } => {
                let r = f(self.record(at, len));
                self.consume(slot);
                self.publish();
                Some(Ok(r))
            }
        }
    }

    fn drain_with(&mut self, max: usize, mut f: impl FnMut(Result<&[u8], DecodeError>)) -> usize {
        let mut n = 0;
        while n < max {
            match self.next() {
                Next::Empty => break,
                Next::Corrupt => {
                    self.discard_all();
                    f(Err(CORRUPT_FRAMING));
                }
                Next::Record { at, len, slot } => {
                    f(Ok(self.record(at, len)));
                    self.consume(slot);
                }
            }
            n += 1;
        }
        if n > 0 {
            self.publish();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{ConnId, CoreStats};
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    impl ControlEnd {
        /// Writes `record` into the command ring as it is, unchecked.
        fn push_raw(&mut self, record: &[u8]) -> Result<(), RingFull> {
            self.commands.push(record)
        }
    }

    impl CoreEnd {
        /// Writes `record` into the event ring as it is, unchecked.
        fn push_raw(&mut self, record: &[u8]) -> Result<(), RingFull> {
            self.events.push(record)
        }
    }

    use crate::test_rng::Rng;

    fn subscribe(i: u32) -> Command {
        Command::Subscribe {
            subscriber: ConnId(i),
            publisher: ConnId(!i),
        }
    }

    fn dtls(i: u32, len: usize) -> Command {
        Command::SendDtls {
            conn: ConnId(i),
            data: (0..len).map(|b| (b as u32 ^ i) as u8).collect(),
        }
    }

    /// Bytes currently in the command ring, as both sides see them after
    /// every operation of a single-threaded test.
    fn used(control: &ControlEnd, core: &CoreEnd) -> usize {
        (control.commands.tail - core.commands.head) as usize
    }

    fn backoff(spins: &mut u32) {
        *spins += 1;
        if spins.is_multiple_of(64) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn ends_are_send() {
        fn send<T: Send + 'static>() {}
        send::<ControlEnd>();
        send::<CoreEnd>();
    }

    #[test]
    fn capacity_is_rounded_up_and_bounded() {
        let (control, core) = core_link(100).unwrap();
        assert_eq!(control.capacity(), 104);
        assert_eq!(core.capacity(), 104);
        assert_eq!(control.max_record_len(), 48 - 4);
        for bad in [0, MIN_RING_CAPACITY - 8, MAX_RING_CAPACITY + 1, usize::MAX] {
            let err = core_link(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn header_describes_the_ring() {
        let (control, _core) = core_link(4096).unwrap();
        let ring = &control.commands.ring;
        assert_eq!(ring.word(MAGIC_AT).load(Ordering::Relaxed), MAGIC);
        assert_eq!(
            ring.word(VERSION_AT).load(Ordering::Relaxed),
            RING_LAYOUT_VERSION
        );
        assert_eq!(ring.word(CAPACITY_AT).load(Ordering::Relaxed), 4096);
    }

    #[test]
    fn wraps_around_over_many_cycles() {
        let (mut control, mut core) = core_link(512).unwrap();
        let cap = control.capacity();
        // SendDtls framing: 4 header + 4 conn + 2 length bytes.
        let max_data = control.max_record_len() - 10;
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut model = VecDeque::new();
        let mut refused = 0;
        let mut framed = 0;
        for i in 0..300_000u32 {
            if rng.below(5) < 3 {
                let cmd = if rng.below(4) == 0 {
                    subscribe(i)
                } else {
                    dtls(i, rng.below(max_data + 1))
                };
                match control.send(&cmd) {
                    Ok(()) => {
                        framed += slot_len(control.scratch.len()) as u64;
                        model.push_back(cmd);
                    }
                    Err(RingFull { needed }) => {
                        refused += 1;
                        // Refused only when there really is no room.
                        assert!(needed > cap - used(&control, &core));
                        assert!(!model.is_empty());
                    }
                }
            } else {
                assert_eq!(core.recv().map(Result::unwrap), model.pop_front());
            }
        }
        while let Some(want) = model.pop_front() {
            assert_eq!(core.recv(), Some(Ok(want)));
        }
        assert_eq!(core.recv(), None);
        assert!(refused > 1000, "only {refused} refusals");
        assert!(
            control.commands.tail > 10_000 * cap as u64,
            "too few cycles"
        );
        // The difference is what wrap markers skipped at the end of the ring.
        assert!(control.commands.tail > framed, "no record ever wrapped");
    }

    #[test]
    fn full_ring_refuses_and_loses_nothing() {
        let (mut control, mut core) = core_link(256).unwrap();
        let mut sent = 0;
        let refused = loop {
            match control.send(&subscribe(sent)) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
        };
        // A Subscribe record is 12 bytes, 16 with framing and padding.
        assert_eq!(refused, RingFull { needed: 16 });
        assert_eq!(sent, 256 / 16);
        // Refusing wrote nothing: still refused, and the queue is intact.
        assert_eq!(control.send(&subscribe(99)), Err(RingFull { needed: 16 }));
        assert_eq!(core.recv(), Some(Ok(subscribe(0))));
        // One record's room is free again, the retried command goes in.
        control.send(&subscribe(sent)).unwrap();
        for i in 1..=sent {
            assert_eq!(core.recv(), Some(Ok(subscribe(i))));
        }
        assert_eq!(core.recv(), None);
    }

    #[test]
    fn record_up_to_half_the_ring_always_fits_an_empty_ring() {
        let (mut control, mut core) = core_link(256).unwrap();
        let max = control.max_record_len();
        assert_eq!(max, 124);
        let big = vec![0xa5; max];
        // Try the largest record at every position of the empty ring.
        for _ in 0..256 / 8 {
            control.push_raw(&big).unwrap();
            assert_eq!(core.recv_with(|r| r == big), Some(Ok(true)));
            // Move on by one 8-byte slot.
            control.push_raw(&[1, 2, 3, 4]).unwrap();
            assert_eq!(core.recv_with(<[u8]>::len), Some(Ok(4)));
        }
        // One byte more never fits, however empty the ring is.
        let too_big = vec![0; max + 1];
        assert_eq!(control.push_raw(&too_big), Err(RingFull { needed: 136 }));
        let cmd = dtls(1, max + 1 - 10);
        assert_eq!(control.send(&cmd), Err(RingFull { needed: 136 }));
        assert_eq!(core.recv(), None);
        // And the ring goes on working.
        control.send(&subscribe(5)).unwrap();
        assert_eq!(core.recv(), Some(Ok(subscribe(5))));
    }

    #[test]
    fn malformed_record_is_an_error_and_the_next_is_read() {
        let (mut control, mut core) = core_link(1024).unwrap();
        control.push_raw(&[1, 0, 0xff, 0xff]).unwrap();
        control.push_raw(&[]).unwrap();
        control.send(&subscribe(7)).unwrap();
        assert_eq!(core.recv(), Some(Err(DecodeError::UnknownTag(0xffff))));
        assert_eq!(core.recv(), Some(Err(DecodeError::Truncated(0))));
        assert_eq!(core.recv(), Some(Ok(subscribe(7))));
        assert_eq!(core.recv(), None);

        core.push_raw(&[9, 0, 1, 1]).unwrap();
        core.send(&Event::ConsentExpired { conn: ConnId(3) })
            .unwrap();
        assert_eq!(control.recv(), Some(Err(DecodeError::Version(9))));
        assert_eq!(
            control.recv(),
            Some(Ok(Event::ConsentExpired { conn: ConnId(3) }))
        );
        assert_eq!(control.recv(), None);
    }

    #[test]
    fn broken_framing_discards_what_is_pending() {
        let (mut control, mut core) = core_link(1024).unwrap();
        control.send(&subscribe(1)).unwrap();
        control.send(&subscribe(2)).unwrap();
        // Overwrite the first record's length as a stray writer would.
        let data = control.commands.ring.data();
        // SAFETY: offset 0 of the data area; the record is not being read.
        unsafe { data.cast::<u32>().write(1000u32.to_le()) };
        assert_eq!(core.recv(), Some(Err(CORRUPT_FRAMING)));
        assert_eq!(core.recv(), None);
        control.send(&subscribe(3)).unwrap();
        assert_eq!(core.recv(), Some(Ok(subscribe(3))));
    }

    #[test]
    fn recv_with_and_drain() {
        let (mut control, mut core) = core_link(4096).unwrap();
        for i in 0..10 {
            control.send(&subscribe(i)).unwrap();
        }
        let mut want = Vec::new();
        subscribe(0).encode(&mut want);
        assert_eq!(core.recv_with(|r| r == want), Some(Ok(true)));

        let mut got = Vec::new();
        assert_eq!(core.drain(4, |c| got.push(c.unwrap())), 4);
        assert_eq!(got, (1..5).map(subscribe).collect::<Vec<_>>());
        // The batch's space was released in one go.
        assert_eq!(control.commands.ring.head().load(Ordering::Relaxed), 5 * 16);
        got.clear();
        assert_eq!(core.drain(100, |c| got.push(c.unwrap())), 5);
        assert_eq!(got, (5..10).map(subscribe).collect::<Vec<_>>());
        assert_eq!(core.drain(100, |_| unreachable!("ring is empty")), 0);

        let stats = Event::CoreStats(CoreStats {
            core: 3,
            ..CoreStats::default()
        });
        core.send(&stats).unwrap();
        core.push_raw(&[0]).unwrap();
        let mut events = Vec::new();
        assert_eq!(control.drain(10, |e| events.push(e)), 2);
        assert_eq!(events, [Ok(stats), Err(DecodeError::Truncated(1))]);
        assert_eq!(control.recv_with(|_| ()), None);
    }

    #[test]
    fn anonymous_mapping_works_too() {
        let cap = 256;
        let ring = Ring::with_mapping(Mapping::anonymous(HEADER_LEN + cap).unwrap(), cap);
        let mut producer = Producer::new(Arc::clone(&ring));
        let mut consumer = Consumer::new(ring);
        for i in 0..1000u32 {
            producer.push(&i.to_le_bytes()).unwrap();
            let got = consumer.pop_with(|r| u32::from_le_bytes(r.try_into().unwrap()));
            assert_eq!(got, Some(Ok(i)));
        }
    }

    #[test]
    fn mapping_lives_until_both_ends_are_dropped() {
        let (mut control, mut core) = core_link(4096).unwrap();
        let commands = Arc::downgrade(&control.commands.ring);
        let events = Arc::downgrade(&control.events.ring);
        control.send(&subscribe(1)).unwrap();
        drop(control);
        assert!(commands.upgrade().is_some() && events.upgrade().is_some());
        // The surviving end still works on its side of each ring.
        assert_eq!(core.recv(), Some(Ok(subscribe(1))));
        core.send(&Event::ConsentExpired { conn: ConnId(1) })
            .unwrap();
        drop(core);
        assert!(commands.upgrade().is_none() && events.upgrade().is_none());
    }

    /// One thread sends a million commands; the other checks their order and
    /// answers each with an event, whose order the first thread checks in
    /// turn. Both rings are small, so both sides keep hitting `RingFull`.
    #[test]
    fn two_threads_keep_strict_order() {
        const N: u32 = 1_000_000;
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut control, mut core) = core_link(4096).unwrap();

        let core_thread = std::thread::spawn(move || {
            let mut expected = 0u32;
            let mut pending: Option<Event> = None;
            let mut spins = 0;
            while expected < N || pending.is_some() {
                if let Some(ev) = &pending {
                    if core.send(ev).is_ok() {
                        pending = None;
                        continue;
                    }
                } else if let Some(cmd) = core.recv() {
                    let cmd = cmd.expect("every record decodes");
                    let conn = match cmd {
                        Command::Subscribe { subscriber, .. } => subscriber,
                        Command::SendDtls { conn, data } => {
                            assert_eq!(data.len(), (conn.0 % 1500) as usize);
                            conn
                        }
                        other => panic!("unexpected {other:?}"),
                    };
                    assert_eq!(conn.0, expected, "commands out of order");
                    expected += 1;
                    pending = Some(Event::ConsentExpired { conn });
                    continue;
                }
                backoff(&mut spins);
                if spins % 4096 == 0 {
                    assert!(
                        Instant::now() < deadline,
                        "core side timed out at {expected}"
                    );
                }
            }
        });

        let mut next_cmd = 0u32;
        let mut next_ev = 0u32;
        let mut spins = 0;
        while next_ev < N {
            let mut progress = false;
            if next_cmd < N {
                let cmd = if next_cmd.is_multiple_of(1000) {
                    dtls(next_cmd, (next_cmd % 1500) as usize)
                } else {
                    subscribe(next_cmd)
                };
                if control.send(&cmd).is_ok() {
                    next_cmd += 1;
                    progress = true;
                }
            }
            while let Some(ev) = control.recv() {
                assert_eq!(
                    ev,
                    Ok(Event::ConsentExpired {
                        conn: ConnId(next_ev)
                    }),
                    "events out of order"
                );
                next_ev += 1;
                progress = true;
            }
            if !progress {
                backoff(&mut spins);
                if spins % 4096 == 0 {
                    assert!(
                        Instant::now() < deadline,
                        "control side timed out at {next_ev}"
                    );
                }
            }
        }
        core_thread.join().expect("core thread");
        assert_eq!(control.recv(), None);
    }
}
