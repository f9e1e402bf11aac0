//! The control plane's side of the rings: one pump task per data-plane core.
//!
//! Commands are queued in an unbounded channel and pushed into the core's ring in
//! order; when the ring is full the pump retries, so a command is never lost.
//! Events are polled from the ring and routed to the connection they name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::ring::ControlEnd;
use shared::{Command, ConnId, ConnStats, CoreStats, Event};
use tokio::sync::mpsc;

/// How often a pump looks at its event ring when nothing else wakes it.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Sends commands to one core, in order, without loss. Cheap to clone.
#[derive(Clone)]
pub struct CommandSender {
    core: usize,
    tx: mpsc::UnboundedSender<Command>,
}

impl CommandSender {
    pub fn core(&self) -> usize {
        self.core
    }
    /// Queues `cmd`. Only fails once the node is shutting down, when commands no
    /// longer matter.
    pub fn send(&self, cmd: Command) {
        let _ = self.tx.send(cmd);
    }
}

/// What the data plane reports about one connection.
#[derive(Debug)]
pub enum ConnEvent {
    IceSelected(std::net::SocketAddr),
    ConsentExpired,
}

/// Where events for a connection go.
#[derive(Default)]
struct Routes {
    dtls: HashMap<ConnId, mpsc::Sender<Vec<u8>>>,
    events: HashMap<ConnId, mpsc::UnboundedSender<ConnEvent>>,
}

/// The latest counters from every core and connection.
#[derive(Default, Clone)]
pub struct MediaStats {
    pub cores: HashMap<u16, CoreStats>,
    pub conns: HashMap<ConnId, ConnStats>,
    /// Ring records from the data plane that failed to decode.
    pub bad_events: u64,
}

/// All cores' command senders and the event routing table.
#[derive(Clone)]
pub struct MediaLink {
    senders: Vec<CommandSender>,
    routes: Arc<Mutex<Routes>>,
    stats: Arc<Mutex<MediaStats>>,
}

impl MediaLink {
    /// Starts one pump task per core end. Must run inside a tokio runtime.
    pub fn start(ends: Vec<ControlEnd>) -> MediaLink {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let stats = Arc::new(Mutex::new(MediaStats::default()));
        let mut senders = Vec::new();
        for (core, end) in ends.into_iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(CommandSender { core, tx });
            tokio::spawn(pump(end, rx, routes.clone(), stats.clone()));
        }
        MediaLink {
            senders,
            routes,
            stats,
        }
    }

    pub fn cores(&self) -> usize {
        self.senders.len()
    }

    pub fn sender(&self, core: usize) -> CommandSender {
        self.senders[core % self.senders.len()].clone()
    }

    /// Sends `cmd` to every core (shutdown, channel ownership of unknown placement).
    pub fn broadcast(&self, cmd: Command) {
        for s in &self.senders {
            s.send(cmd.clone());
        }
    }

    /// Registers where DTLS records and ICE events of `conn` go.
    pub fn route(
        &self,
        conn: ConnId,
        dtls: mpsc::Sender<Vec<u8>>,
        events: mpsc::UnboundedSender<ConnEvent>,
    ) {
        let mut r = self.routes.lock().expect("routes lock poisoned");
        r.dtls.insert(conn, dtls);
        r.events.insert(conn, events);
    }

    pub fn unroute(&self, conn: ConnId) {
        let mut r = self.routes.lock().expect("routes lock poisoned");
        r.dtls.remove(&conn);
        r.events.remove(&conn);
        drop(r);
        self.stats
            .lock()
            .expect("stats lock poisoned")
            .conns
            .remove(&conn);
    }

    pub fn stats(&self) -> MediaStats {
        self.stats.lock().expect("stats lock poisoned").clone()
    }
}

async fn pump(
    mut end: ControlEnd,
    mut commands: mpsc::UnboundedReceiver<Command>,
    routes: Arc<Mutex<Routes>>,
    stats: Arc<Mutex<MediaStats>>,
) {
    let mut pending: Option<Command> = None;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    loop {
        // Push queued commands until the ring is full.
        loop {
            let cmd = match pending.take() {
                Some(c) => c,
                None => match commands.try_recv() {
                    Ok(c) => c,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                },
            };
            if end.send(&cmd).is_err() {
                if oversized(&cmd, end.max_record_len()) {
                    // It would never fit: retrying would stall every later command.
                    tracing::error!(?cmd, "command larger than the ring's record limit: dropped");
                    continue;
                }
                pending = Some(cmd);
                break;
            }
        }
        while let Some(ev) = end.recv() {
            match ev {
                Ok(ev) => dispatch(ev, &routes, &stats),
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable event from the data plane");
                    stats.lock().expect("stats lock poisoned").bad_events += 1;
                }
            }
        }
        if !open && pending.is_none() {
            return;
        }
        if pending.is_some() || !open {
            tick.tick().await;
            continue;
        }
        tokio::select! {
            c = commands.recv() => match c {
                Some(c) => pending = Some(c),
                None => open = false,
            },
            _ = tick.tick() => {}
        }
    }
}

/// Whether `cmd` can never fit in a ring whose records are at most `max` bytes.
fn oversized(cmd: &Command, max: usize) -> bool {
    let mut buf = Vec::new();
    cmd.encode(&mut buf);
    buf.len() > max
}

fn dispatch(ev: Event, routes: &Mutex<Routes>, stats: &Mutex<MediaStats>) {
    match ev {
        Event::DtlsReceived { conn, data } => {
            let tx = routes
                .lock()
                .expect("routes lock poisoned")
                .dtls
                .get(&conn)
                .cloned();
            if let Some(tx) = tx {
                // A full queue means the handshake is stuck; DTLS retransmits.
                let _ = tx.try_send(data);
            }
        }
        Event::IceSelected { conn, peer } => send_event(routes, conn, ConnEvent::IceSelected(peer)),
        Event::ConsentExpired { conn } => send_event(routes, conn, ConnEvent::ConsentExpired),
        Event::CoreStats(s) => {
            stats
                .lock()
                .expect("stats lock poisoned")
                .cores
                .insert(s.core, s);
        }
        Event::ConnStats { conn, stats: s } => {
            let known = routes
                .lock()
                .expect("routes lock poisoned")
                .events
                .contains_key(&conn);
            if known {
                stats
                    .lock()
                    .expect("stats lock poisoned")
                    .conns
                    .insert(conn, s);
            }
        }
    }
}

fn send_event(routes: &Mutex<Routes>, conn: ConnId, ev: ConnEvent) {
    let tx = routes
        .lock()
        .expect("routes lock poisoned")
        .events
        .get(&conn)
        .cloned();
    if let Some(tx) = tx {
        let _ = tx.send(ev);
    }
}
