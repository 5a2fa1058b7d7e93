//! The server and clients over an in-memory network with a simulated clock.

use super::*;
use crate::client::{Client, ClientConfig, Event};

const NET: &str = "prod";
const KEY: [u8; 32] = [9; 32];

struct Sim {
    start: Instant,
    now: Instant,
    wall0: u64,
    server: Server,
    clients: Vec<(SocketAddr, Client)>,
    events: Vec<Vec<Event>>,
    /// Server -> client frames are dropped while this returns true.
    drop_down: Box<dyn FnMut(SocketAddr) -> bool>,
    bytes_down: usize,
    frames_down: usize,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 18, (i / 250) as u8, (i % 250) as u8 + 1], 40000))
}

impl Sim {
    fn new(n: usize) -> Self {
        let now = Instant::now();
        let mut s = Sim {
            start: now,
            now,
            wall0: 1_800_000_000_000_000,
            server: Server::new(ServerConfig::default(), &[(NET.into(), KEY)], now, 1),
            clients: vec![],
            events: vec![],
            drop_down: Box::new(|_| false),
            bytes_down: 0,
            frames_down: 0,
        };
        for _ in 0..n {
            s.add_client();
        }
        s
    }

    fn wall(&self) -> u64 {
        self.wall0 + self.now.duration_since(self.start).as_micros() as u64
    }

    fn add_client(&mut self) -> usize {
        let i = self.clients.len();
        let cfg = ClientConfig {
            name: format!("node-{i}"),
            incarnation: 1000 + i as u64,
            overlay: vec![format!("100.64.{}.{}/32", i / 250, i % 250 + 1).parse().unwrap()],
            routes: vec![],
            candidates: vec![SocketAddr::from(([10, 0, 0, 1], 40000))],
            heartbeat: Duration::from_secs(10),
            freshness: Duration::from_secs(60),
        };
        let c = Client::new(cfg, "198.51.100.1:6264".parse().unwrap(), NET, &KEY, self.now, i as u64);
        self.clients.push((addr(i), c));
        self.events.push(vec![]);
        i
    }

    /// Delivers everything queued, repeatedly, until quiet.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            let wall = self.wall();
            for (src, c) in &mut self.clients {
                while let Some(f) = c.poll_transmit() {
                    moved = true;
                    let _ = self.server.handle(self.now, wall, *src, &f);
                }
            }
            while let Some(t) = self.server.poll_transmit() {
                moved = true;
                if (self.drop_down)(t.dst) {
                    continue;
                }
                self.bytes_down += t.payload.len();
                self.frames_down += 1;
                if let Some(i) = self.clients.iter().position(|(a, _)| *a == t.dst) {
                    self.clients[i].1.handle(self.now, wall, &t.payload).expect("valid frame from server");
                }
            }
            for (i, (_, c)) in self.clients.iter_mut().enumerate() {
                while let Some(e) = c.poll_event() {
                    self.events[i].push(e);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Advances the clock to `until`, firing timers in order.
    fn run_until(&mut self, until: Instant) {
        loop {
            let next = self
                .clients
                .iter()
                .map(|(_, c)| c.poll_timeout())
                .chain(std::iter::once(self.server.poll_timeout()))
                .min()
                .unwrap();
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            let wall = self.wall();
            for (_, c) in &mut self.clients {
                c.handle_timeout(self.now, wall);
            }
            self.server.handle_timeout(self.now, wall);
            self.pump();
        }
    }

    fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    fn peers_of(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = self.clients[i].1.peers().map(|p| p.name.clone()).collect();
        v.sort();
        v
    }

    fn names_except(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> =
            (0..self.clients.len()).filter(|j| *j != i).map(|j| format!("node-{j}")).collect();
        v.sort();
        v
    }
}

#[test]
fn members_learn_reflexive_address_and_each_other() {
    let mut s = Sim::new(3);
    s.run_for(Duration::from_secs(1));
    for i in 0..3 {
        assert_eq!(s.clients[i].1.reflexive(), Some(addr(i)));
        assert_eq!(s.peers_of(i), s.names_except(i));
        let p = s.clients[i].1.peers().next().unwrap();
        assert_eq!(
            p.reflexive,
            addr(p.name[5..].parse().unwrap()),
            "peer entry carries the peer's reflexive address"
        );
    }
}

#[test]
fn a_join_introduces_both_sides_in_the_same_step() {
    let mut s = Sim::new(2);
    s.run_for(Duration::from_secs(1));
    for e in &mut s.events {
        e.clear();
    }
    let n = s.add_client();
    // One timer step: the newcomer registers and every pair involving it is introduced on both ends.
    let t = s.clients[n].1.poll_timeout();
    s.run_until(t);
    for i in 0..2 {
        assert!(
            s.events[i]
                .iter()
                .any(|e| matches!(e, Event::Peer { entry, introduce: true } if entry.name == "node-2")),
            "node-{i} was not introduced to the newcomer: {:?}",
            s.events[i]
        );
    }
    let introduced: Vec<&str> = s.events[n]
        .iter()
        .filter_map(|e| match e {
            Event::Peer { entry, introduce: true } => Some(entry.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(introduced.len(), 2, "newcomer must be introduced to both: {:?}", s.events[n]);
}

#[test]
fn a_silent_member_disappears_and_others_are_told() {
    let mut s = Sim::new(3);
    s.run_for(Duration::from_secs(1));
    // node-2 stops heartbeating: its timer is pushed far into the future by removing it from the sim.
    let (_, dead) = s.clients.pop().unwrap();
    s.events.pop();
    drop(dead);
    s.run_for(Duration::from_secs(27));
    assert_eq!(s.peers_of(0), vec!["node-1", "node-2"], "not removed before the 30 s timeout");
    s.run_for(Duration::from_secs(6));
    assert_eq!(s.server.member_count(NET), 2);
    assert_eq!(s.peers_of(0), vec!["node-1"]);
    assert!(s.events[1].iter().any(|e| matches!(e, Event::Gone { name, .. } if name == "node-2")));
}

#[test]
fn forged_replayed_and_foreign_frames_are_dropped() {
    let mut s = Sim::new(1);
    let wall = s.wall();
    let now = s.now;
    // Capture node-0's first register before delivering it.
    s.clients[0].1.handle_timeout(now, wall);
    let frame = s.clients[0].1.poll_transmit().unwrap();
    assert_eq!(s.server.handle(now, wall, addr(0), &frame), Ok(()));
    assert_eq!(s.server.handle(now, wall, addr(0), &frame), Err(Drop::Replay), "replayed register");
    let mut forged = frame.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(s.server.handle(now, wall, addr(5), &forged), Err(Drop::Auth));
    // Someone without the secret builds a well-formed frame with a guessed key.
    let other = FrameKey::new(NET, &[1; 32]);
    let msg = Message { seq: wall, sender: "evil".into(), body: Body::Sync };
    assert_eq!(s.server.handle(now, wall, addr(6), &other.seal(&msg, [0; 12]).unwrap()), Err(Drop::Auth));
    let foreign = FrameKey::new("elsewhere", &KEY).seal(&msg, [0; 12]).unwrap();
    assert_eq!(s.server.handle(now, wall, addr(6), &foreign), Err(Drop::UnknownNetwork));
    assert_eq!(s.server.handle(now, wall, addr(6), b"\x52\x01"), Err(Drop::Malformed));
    assert_eq!(s.server.handle(now, wall, addr(6), b""), Err(Drop::Malformed));
    assert_eq!(s.server.member_count(NET), 1, "only the genuine register counted");
    // A stale frame (captured long ago) is refused even by a fresh server.
    let later = wall + 120_000_000;
    let mut fresh = Server::new(ServerConfig::default(), &[(NET.into(), KEY)], now, 2);
    assert_eq!(fresh.handle(now, later, addr(0), &frame), Err(Drop::Replay));
    // Clients refuse replayed server frames too.
    s.pump();
}

#[test]
fn departed_members_cannot_be_revived_by_replay() {
    let mut s = Sim::new(2);
    let now = s.now;
    let wall = s.wall();
    s.clients[1].1.handle_timeout(now, wall);
    let frame = s.clients[1].1.poll_transmit().unwrap();
    assert_eq!(s.server.handle(now, wall, addr(1), &frame), Ok(()));
    s.clients.pop();
    s.events.pop();
    s.run_for(Duration::from_secs(35));
    assert_eq!(s.server.member_count(NET), 1);
    let wall = s.wall();
    assert_eq!(s.server.handle(s.now, wall, addr(1), &frame), Err(Drop::Replay));
    assert_eq!(s.server.member_count(NET), 1);
}

#[test]
fn rolodex_restart_keeps_views_and_members_reregister() {
    let mut s = Sim::new(4);
    s.run_for(Duration::from_secs(15));
    for e in &mut s.events {
        e.clear();
    }
    s.server = Server::new(ServerConfig::default(), &[(NET.into(), KEY)], s.now, 99);
    s.run_for(Duration::from_secs(11));
    assert_eq!(s.server.member_count(NET), 4, "every member re-registered within one heartbeat");
    for i in 0..4 {
        assert!(s.events[i].contains(&Event::RolodexRestarted));
        assert!(
            !s.events[i].iter().any(|e| matches!(e, Event::Gone { .. })),
            "no live peer was dropped: {:?}",
            s.events[i]
        );
        assert_eq!(s.peers_of(i), s.names_except(i));
    }
}

#[test]
fn peers_that_died_while_the_rolodex_was_down_are_dropped_after_the_grace_period() {
    let mut s = Sim::new(3);
    s.run_for(Duration::from_secs(15));
    s.server = Server::new(ServerConfig::default(), &[(NET.into(), KEY)], s.now, 99);
    s.clients.pop();
    s.events.pop();
    s.run_for(Duration::from_secs(20));
    assert_eq!(s.peers_of(0), vec!["node-1", "node-2"], "kept during grace");
    s.run_for(Duration::from_secs(60));
    assert_eq!(s.peers_of(0), vec!["node-1"]);
    assert_eq!(s.peers_of(1), vec!["node-0"]);
}

#[test]
fn a_lost_delta_is_healed_by_the_view_digest() {
    let mut s = Sim::new(2);
    s.run_for(Duration::from_secs(1));
    // node-0 misses the announcement of the newcomer.
    let victim = addr(0);
    s.drop_down = Box::new(move |dst| dst == victim);
    let n = s.add_client();
    let t = s.clients[n].1.poll_timeout();
    s.run_until(t);
    s.drop_down = Box::new(|_| false);
    assert_eq!(s.peers_of(0), vec!["node-1"]);
    // The next heartbeat carries a stale digest; the rolodex sends the full list.
    s.run_for(Duration::from_secs(12));
    assert_eq!(s.peers_of(0), vec!["node-1", "node-2"]);
}

#[test]
fn large_networks_page_the_listing() {
    let mut s = Sim::new(120);
    s.run_for(Duration::from_secs(2));
    assert_eq!(s.server.member_count(NET), 120);
    for i in [0, 57, 119] {
        assert_eq!(s.peers_of(i).len(), 119, "node-{i} sees everyone");
    }
}

#[test]
fn connect_request_introduces_both_again() {
    let mut s = Sim::new(3);
    s.run_for(Duration::from_secs(1));
    for e in &mut s.events {
        e.clear();
    }
    let wall = s.wall();
    s.clients[0].1.request_connect(wall, "node-2");
    s.pump();
    assert!(
        s.events[0]
            .iter()
            .any(|e| matches!(e, Event::Peer { entry, introduce: true } if entry.name == "node-2"))
    );
    assert!(
        s.events[2]
            .iter()
            .any(|e| matches!(e, Event::Peer { entry, introduce: true } if entry.name == "node-0"))
    );
    assert!(s.events[1].is_empty(), "bystander untouched: {:?}", s.events[1]);
}

/// Steady-state rolodex traffic grows linearly with the member count, not quadratically.
#[test]
fn steady_state_traffic_is_linear_in_members() {
    let mut per_interval = vec![];
    for n in [50usize, 100, 200] {
        let mut s = Sim::new(n);
        s.run_for(Duration::from_secs(30));
        s.bytes_down = 0;
        s.frames_down = 0;
        s.run_for(Duration::from_secs(100));
        let frames = s.frames_down as f64 / 10.0;
        per_interval.push((n, frames, s.bytes_down as f64 / 10.0));
    }
    eprintln!("members, frames/interval, bytes/interval: {per_interval:?}");
    for (n, frames, _) in &per_interval {
        // One ack per heartbeat, nothing else, in steady state.
        assert!(*frames <= *n as f64 * 1.2, "{n} members sent {frames} frames per interval");
    }
    let r = per_interval[2].2 / per_interval[0].2;
    assert!((3.0..5.0).contains(&r), "4x members should cost ~4x bytes, got {r:.2}x");
}

#[test]
fn ready_is_forwarded_only_to_the_named_peer() {
    let mut s = Sim::new(3);
    s.run_for(Duration::from_secs(1));
    for e in &mut s.events {
        e.clear();
    }
    let wall = s.wall();
    s.clients[0].1.send_ready(wall, "node-2");
    s.clients[0].1.send_ready(wall, "nobody");
    s.pump();
    assert_eq!(s.events[2], vec![Event::PeerReady { name: "node-0".into() }]);
    assert!(s.events[0].is_empty() && s.events[1].is_empty());
}

/// Frames overtaking each other in flight: the (empty) listing answering node-0's first register must not
/// erase node-1 when it arrives after node-1's introduction, and the overtaken ack is still accepted (not
/// mistaken for a replay).
#[test]
fn reordered_frames_neither_lose_peers_nor_acks() {
    let mut s = Sim::new(1);
    let now = s.now;
    let wall = s.wall();
    let drain = |s: &mut Sim| {
        let mut v = vec![];
        while let Some(t) = s.server.poll_transmit() {
            v.push(t);
        }
        v
    };
    s.clients[0].1.handle_timeout(now, wall);
    let reg0 = s.clients[0].1.poll_transmit().unwrap();
    s.server.handle(now, wall, addr(0), &reg0).unwrap();
    let first = drain(&mut s); // ack + empty listing for node-0
    let n = s.add_client();
    s.clients[n].1.handle_timeout(now, wall + 1000);
    let reg1 = s.clients[n].1.poll_transmit().unwrap();
    s.server.handle(now, wall + 1000, addr(n), &reg1).unwrap();
    let intro: Vec<_> = drain(&mut s).into_iter().filter(|t| t.dst == addr(0)).collect();
    assert_eq!(intro.len(), 1);
    for t in intro.iter().chain(&first) {
        s.clients[0].1.handle(now, wall + 2000, &t.payload).expect("reordered frame accepted");
    }
    assert!(s.clients[0].1.is_registered(), "the overtaken ack was dropped");
    let peers: Vec<&str> = s.clients[0].1.peers().map(|p| p.name.as_str()).collect();
    assert_eq!(peers, vec!["node-1"], "an old listing erased a newer introduction");
    assert!(s.clients[0].1.handle(now, wall + 2000, &first[0].payload).is_err(), "a true replay is refused");
}

/// Many members joining at once (a mass restart): their introductions to each member already there go out
/// packed into a few frames, not one frame per newcomer, and everyone still learns everyone.
#[test]
fn joins_handled_together_are_announced_in_few_frames() {
    let mut s = Sim::new(30);
    s.run_for(Duration::from_secs(1));
    let counts = std::rc::Rc::new(std::cell::RefCell::new(HashMap::<SocketAddr, usize>::new()));
    let c = counts.clone();
    s.drop_down = Box::new(move |dst| {
        *c.borrow_mut().entry(dst).or_default() += 1;
        false
    });
    let first = s.clients.len();
    for _ in 0..60 {
        s.add_client();
    }
    // One step: the 60 registers are all handled before the rolodex's queue is drained.
    let t = s.clients[first].1.poll_timeout();
    s.run_until(t);
    for i in 0..first {
        let frames = counts.borrow()[&addr(i)];
        assert!(frames <= 4, "node-{i} got {frames} frames for 60 joins");
    }
    for i in [0, first, first + 59] {
        assert_eq!(s.peers_of(i), s.names_except(i), "node-{i}");
    }
}

/// A heartbeat sent before the member got the latest delta is lagging, not stale: it gets an ack, not the
/// whole member list.
#[test]
fn a_heartbeat_overtaken_by_a_join_gets_no_listing() {
    let mut s = Sim::new(3);
    s.run_for(Duration::from_secs(1));
    let t = s.clients[0].1.poll_timeout();
    s.run_until(t - Duration::from_millis(1));
    s.now = t;
    let wall = s.wall();
    s.clients[0].1.handle_timeout(t, wall);
    let heartbeat = s.clients[0].1.poll_transmit().unwrap();
    let n = s.add_client();
    s.clients[n].1.handle_timeout(t, wall);
    let reg = s.clients[n].1.poll_transmit().unwrap();
    s.server.handle(t, wall, addr(n), &reg).unwrap();
    let mut held = vec![];
    while let Some(tx) = s.server.poll_transmit() {
        held.push(tx);
    }
    s.server.handle(t, wall + 10, addr(0), &heartbeat).unwrap();
    let answer: Vec<Transmit> = std::iter::from_fn(|| s.server.poll_transmit()).collect();
    assert_eq!(answer.len(), 1, "only an ack, not the member list");
    for tx in held.iter().chain(&answer).filter(|tx| tx.dst == addr(0)) {
        s.clients[0].1.handle(t, wall + 20, &tx.payload).unwrap();
    }
    assert_eq!(s.peers_of(0), vec!["node-1", "node-2", "node-3"]);
}
