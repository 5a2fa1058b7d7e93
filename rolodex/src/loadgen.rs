//! A load generator for the rolodex: thousands of simulated members speaking the real protocol over UDP,
//! one socket (so one reflexive address) each, in one process.
//!
//! A full [`Client`] keeps every peer's entry and news, so 10,000 of them would hold 10^8 entries. A
//! [`SimMember`] keeps only what shapes its traffic: its view as a bitset over the swarm's member indices and
//! the view's digest, so its heartbeats carry the digest a real member's would and the rolodex treats it as
//! one (a wrong digest costs a full listing). Like the client it retries registration with backoff and
//! jitter, follows the acked heartbeat, learns from deltas and listings and forgets on `Gone`; it does not
//! drop peers that a complete listing lacks (nobody leaves during a benchmark). Every entry received is
//! checked against what that member registered. The members whose introduction latency is measured
//! ([`Swarm::join_pair`]) are real [`Client`]s.
//!
//! Members are named `sim-<index>`. Everything runs on the current thread: call from inside a
//! [`tokio::task::LocalSet`].

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::client::{Client, ClientConfig, Event};
use crate::net::IpNet;
use crate::proto::{self, Body, FrameKey, Message, PeerEntry, Register};
use crate::replay::{SeqClock, SeqWindow};
use crate::service::wall_us;

const PREFIX: &str = "sim-";
const FRESHNESS: Duration = Duration::from_secs(60);
/// The client's first retry and its heartbeat bounds (see `client.rs`).
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
const MAX_HEARTBEAT: Duration = Duration::from_secs(300);
/// Receive buffer per member socket: a member list of 10,000 arrives as ~400 pages in one burst, and an
/// agent's socket holds that (it asks for 7 MiB). Capped by net.core.rmem_max.
const RECV_BUFFER: usize = 4 << 20;

pub fn member_name(index: usize) -> String {
    format!("{PREFIX}{index}")
}

fn member_index(name: &str) -> Option<usize> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

/// A member's overlay address: 100.64.0.0/10 numbered by index.
fn overlay(index: usize) -> IpNet {
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 1));
    IpNet::host(Ipv4Addr::from(base.wrapping_add(index as u32)).into())
}

/// Traffic and anomalies seen by the whole swarm (simulated members and real clients).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub acks: u64,
    pub delta_frames: u64,
    pub listing_pages: u64,
    pub entries: u64,
    pub restarts: u64,
    /// Frames that failed to open or were replays, unexpected kinds, entries that differ from what the
    /// member registered, and send errors.
    pub anomalies: u64,
}

/// How far registration has got among the simulated members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub members: usize,
    /// Acked at least once.
    pub registered: usize,
    /// Know every other member of the swarm (simulated or real) that has started.
    pub complete: usize,
}

/// One simulated member's protocol state.
pub struct SimMember {
    index: usize,
    name: String,
    incarnation: u64,
    local: SocketAddr,
    seq: SeqClock,
    rx: SeqWindow,
    heartbeat: Duration,
    retry: Duration,
    next_register: Instant,
    acked: bool,
    boot_id: Option<u64>,
    view: Vec<u64>,
    known: usize,
    digest: u64,
}

impl SimMember {
    fn new(index: usize, incarnation: u64, local: SocketAddr, capacity: usize, start: Instant) -> Self {
        Self {
            index,
            name: member_name(index),
            incarnation,
            local,
            seq: SeqClock::default(),
            rx: SeqWindow::default(),
            heartbeat: MIN_HEARTBEAT,
            retry: FIRST_RETRY,
            next_register: start,
            acked: false,
            boot_id: None,
            view: vec![0; capacity.div_ceil(64)],
            known: 0,
            digest: 0,
        }
    }

    pub fn knows(&self, index: usize) -> bool {
        self.view.get(index / 64).is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// The register (heartbeat) frame, as the client builds it, and when the next one is due.
    fn register(&mut self, key: &FrameKey, rng: &mut StdRng, now: Instant, wall: u64) -> Option<Vec<u8>> {
        let reg = Register {
            incarnation: self.incarnation,
            overlay: vec![overlay(self.index)],
            routes: vec![],
            candidates: vec![self.local],
            view_digest: self.digest,
        };
        let msg = Message { seq: self.seq.next(wall), sender: self.name.clone(), body: Body::Register(reg) };
        let wait = if self.acked {
            self.heartbeat
        } else {
            let w = self.retry;
            self.retry = (self.retry * 2).min(self.heartbeat);
            w
        };
        let jitter = rng.random_range(0..=wait.as_millis() as u64 / 10);
        self.next_register = now + wait + Duration::from_millis(jitter);
        key.seal(&msg, rng.random()).ok()
    }

    fn handle(&mut self, sw: &mut Book, now: Instant, wall: u64, data: &[u8]) -> Result<(), ()> {
        let msg = sw.key.open(data).map_err(|_| ())?;
        if !msg.sender.is_empty() || !self.rx.accept(msg.seq, wall, FRESHNESS) {
            return Err(());
        }
        match msg.body {
            Body::Ack(ack) => {
                sw.counters.acks += 1;
                if self.boot_id.is_some_and(|b| b != ack.boot_id) {
                    sw.counters.restarts += 1;
                }
                self.boot_id = Some(ack.boot_id);
                if ack.reflexive != self.local {
                    return Err(());
                }
                self.acked = true;
                self.retry = FIRST_RETRY;
                self.heartbeat =
                    Duration::from_millis(ack.heartbeat_ms.into()).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
                self.next_register = now + self.heartbeat;
            }
            Body::Peers { listing, entries, .. } => {
                match listing {
                    Some(_) => sw.counters.listing_pages += 1,
                    None => sw.counters.delta_frames += 1,
                }
                for e in &entries {
                    self.learn(sw, e);
                }
            }
            Body::Gone { peers } => {
                for (name, inc) in peers {
                    let Some(i) = member_index(&name).filter(|i| self.knows(*i)) else { continue };
                    if sw.hashes.get(i).is_some_and(|h| sw.incarnations[i] == inc && *h != 0) {
                        self.view[i / 64] &= !(1 << (i % 64));
                        self.digest ^= sw.hashes[i];
                        self.known -= 1;
                    }
                }
            }
            Body::Ready { .. } => {}
            _ => return Err(()),
        }
        Ok(())
    }

    fn learn(&mut self, sw: &mut Book, e: &PeerEntry) {
        sw.counters.entries += 1;
        let h = proto::entry_hash(&e.name, e.incarnation, e.reflexive);
        let Some(i) = member_index(&e.name).filter(|i| sw.hashes.get(*i).is_some_and(|x| *x == h)) else {
            sw.counters.anomalies += 1;
            return;
        };
        if i != self.index && !self.knows(i) {
            self.view[i / 64] |= 1 << (i % 64);
            self.digest ^= h;
            self.known += 1;
        }
    }
}

/// What every member consults: the key and what each member index registered.
struct Book {
    key: FrameKey,
    /// Expected entry hash per member index; 0 until that member's socket is bound.
    hashes: Vec<u64>,
    incarnations: Vec<u64>,
    rng: StdRng,
    counters: Counters,
}

struct Shared {
    book: Book,
    members: Vec<SimMember>,
    /// Members (simulated and real) started so far.
    started: usize,
}

pub struct SwarmConfig {
    pub server: SocketAddr,
    pub network: String,
    pub key: [u8; 32],
    /// The most members (simulated plus real) this swarm will hold.
    pub capacity: usize,
    pub seed: u64,
}

/// Time from each real client's first register until it learnt the other, and until every simulated member
/// knew both.
#[derive(Debug, Clone, Copy)]
pub struct PairTiming {
    pub a_learned: Duration,
    pub b_learned: Duration,
    pub all_knew: Option<Duration>,
}

pub struct Swarm {
    cfg: SwarmConfig,
    shared: Rc<RefCell<Shared>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
}

impl Swarm {
    pub fn new(cfg: SwarmConfig) -> Self {
        let book = Book {
            key: FrameKey::new(&cfg.network, &cfg.key),
            hashes: vec![0; cfg.capacity],
            incarnations: vec![0; cfg.capacity],
            rng: StdRng::seed_from_u64(cfg.seed),
            counters: Counters::default(),
        };
        let shared = Shared { book, members: Vec::new(), started: 0 };
        Self { cfg, shared: Rc::new(RefCell::new(shared)), tasks: RefCell::new(Vec::new()) }
    }

    /// Binds a socket for the next member index and records what it will register.
    async fn bind_next(&self) -> anyhow::Result<(usize, u64, UdpSocket)> {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.context("binding a member socket")?;
        // Best effort: without it bursts may be dropped, which the member then heals like a real one.
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(RECV_BUFFER);
        sock.connect(self.cfg.server).await.context("connecting a member socket")?;
        let local = sock.local_addr()?;
        let mut s = self.shared.borrow_mut();
        let index = s.started;
        anyhow::ensure!(index < self.cfg.capacity, "swarm capacity {} exceeded", self.cfg.capacity);
        s.started += 1;
        let incarnation: u64 = s.book.rng.random();
        s.book.hashes[index] = proto::entry_hash(&member_name(index), incarnation, local);
        s.book.incarnations[index] = incarnation;
        Ok((index, incarnation, sock))
    }

    /// Binds `n` new simulated members' sockets, then starts them evenly spread over `ramp`. Returns the
    /// instant the first one starts; they keep heartbeating until the swarm is dropped.
    pub async fn add_members(&self, n: usize, ramp: Duration) -> anyhow::Result<Instant> {
        let mut socks = Vec::with_capacity(n);
        for _ in 0..n {
            socks.push(self.bind_next().await?);
        }
        let start = Instant::now();
        let mut tasks = self.tasks.borrow_mut();
        for (k, (index, incarnation, sock)) in socks.into_iter().enumerate() {
            let at = start + ramp.mul_f64(k as f64 / n.max(1) as f64);
            let local = sock.local_addr()?;
            let slot = {
                let mut s = self.shared.borrow_mut();
                s.members.push(SimMember::new(index, incarnation, local, self.cfg.capacity, at));
                s.members.len() - 1
            };
            tasks.push(tokio::task::spawn_local(run_member(self.shared.clone(), slot, sock)));
        }
        Ok(start)
    }

    pub fn progress(&self) -> Progress {
        let s = self.shared.borrow();
        let others = s.started.saturating_sub(1);
        Progress {
            members: s.members.len(),
            registered: s.members.iter().filter(|m| m.acked).count(),
            complete: s.members.iter().filter(|m| m.known == others).count(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.shared.borrow().book.counters
    }

    /// How many simulated members know member `index`.
    pub fn knowing(&self, index: usize) -> usize {
        self.shared.borrow().members.iter().filter(|m| m.knows(index)).count()
    }

    /// Starts two real clients at the same moment and measures how long each takes to learn the other, and
    /// how long until every simulated member knows both. Gives up after `timeout`.
    pub async fn join_pair(&self, timeout: Duration) -> anyhow::Result<PairTiming> {
        let (a, inc_a, sock_a) = self.bind_next().await?;
        let (b, inc_b, sock_b) = self.bind_next().await?;
        let start = Instant::now();
        let (tx_a, rx_a) = tokio::sync::oneshot::channel();
        let (tx_b, rx_b) = tokio::sync::oneshot::channel();
        for (me, inc, sock, other, tx) in [(a, inc_a, sock_a, b, tx_a), (b, inc_b, sock_b, a, tx_b)] {
            let client = self.client(me, inc, &sock)?;
            let task = run_client(self.shared.clone(), client, sock, member_name(other), tx);
            self.tasks.borrow_mut().push(tokio::task::spawn_local(task));
        }
        let learned = tokio::time::timeout(timeout, async { (rx_a.await, rx_b.await) })
            .await
            .context("the pair did not learn of each other in time")?;
        let (Ok(a_learned), Ok(b_learned)) = learned else { anyhow::bail!("a pair client stopped") };
        let deadline = start + timeout;
        let all = self.progress().members;
        let mut all_knew = None;
        while Instant::now() < deadline {
            if self.knowing(a) == all && self.knowing(b) == all {
                all_knew = Some(start.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(PairTiming { a_learned, b_learned, all_knew })
    }

    fn client(&self, index: usize, incarnation: u64, sock: &UdpSocket) -> anyhow::Result<Client> {
        let local = sock.local_addr()?;
        let cfg = ClientConfig {
            name: member_name(index),
            incarnation,
            overlay: vec![overlay(index)],
            routes: vec![],
            candidates: vec![local],
            heartbeat: MIN_HEARTBEAT,
            freshness: FRESHNESS,
        };
        let seed = self.shared.borrow_mut().book.rng.random();
        Ok(Client::new(cfg, self.cfg.server, &self.cfg.network, &self.cfg.key, Instant::now(), seed))
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for t in self.tasks.borrow().iter() {
            t.abort();
        }
    }
}

async fn run_member(shared: Rc<RefCell<Shared>>, slot: usize, sock: UdpSocket) {
    let mut buf = vec![0u8; 2048];
    loop {
        let due = shared.borrow().members[slot].next_register;
        tokio::select! {
            r = sock.recv(&mut buf) => {
                let mut s = shared.borrow_mut();
                let Shared { book, members, .. } = &mut *s;
                match r {
                    Ok(n) => {
                        book.counters.frames_in += 1;
                        book.counters.bytes_in += n as u64;
                        if members[slot].handle(book, Instant::now(), wall_us(), &buf[..n]).is_err() {
                            book.counters.anomalies += 1;
                        }
                    }
                    // ICMP errors (the rolodex is gone) surface here; the next heartbeat retries.
                    Err(_) => book.counters.anomalies += 1,
                }
            }
            _ = tokio::time::sleep_until(due.into()) => {
                let frame = {
                    let mut s = shared.borrow_mut();
                    let Shared { book, members, .. } = &mut *s;
                    members[slot].register(&book.key, &mut book.rng, Instant::now(), wall_us())
                };
                if let Some(f) = frame {
                    send(&shared, &sock, &f).await;
                }
            }
        }
    }
}

async fn send(shared: &Rc<RefCell<Shared>>, sock: &UdpSocket, frame: &[u8]) {
    let ok = sock.send(frame).await.is_ok();
    let c = &mut shared.borrow_mut().book.counters;
    if ok {
        c.frames_out += 1;
        c.bytes_out += frame.len() as u64;
    } else {
        c.anomalies += 1;
    }
}

/// Drives a real client; reports (once) how long after its first register it learnt `other`.
async fn run_client(
    shared: Rc<RefCell<Shared>>,
    mut client: Client,
    sock: UdpSocket,
    other: String,
    tx: tokio::sync::oneshot::Sender<Duration>,
) {
    let start = Instant::now();
    let mut tx = Some(tx);
    let mut buf = vec![0u8; 2048];
    client.handle_timeout(start, wall_us());
    loop {
        while let Some(f) = client.poll_transmit() {
            send(&shared, &sock, &f).await;
        }
        while let Some(e) = client.poll_event() {
            if let Event::Peer { entry, .. } = e
                && entry.name == other
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(start.elapsed());
            }
        }
        tokio::select! {
            r = sock.recv(&mut buf) => {
                let ok = match r {
                    Ok(n) => client.handle(Instant::now(), wall_us(), &buf[..n]).is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    shared.borrow_mut().book.counters.anomalies += 1;
                }
            }
            _ = tokio::time::sleep_until(client.poll_timeout().into()) => {
                client.handle_timeout(Instant::now(), wall_us());
            }
        }
    }
}
