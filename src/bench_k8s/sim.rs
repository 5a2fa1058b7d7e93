//! A synthetic full mesh for the status writers: what each agent's engine snapshot would say at time `t`.
//!
//! Every link comes up once during the ramp (Punching, then Handshaking, then Up, at a time hashed from the
//! pair). During churn one node "restarts" every `flap_every`: every link to it goes Down for a few seconds,
//! handshakes again and comes back Up with a new handshake time, as a real agent restart looks to its peers.
//! Everything is a pure function of (agent, peer, t), so no state is shared between the agents' tasks.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use agent::kube::{PeerSnapshot, Snapshot};
use agent::peer::LinkState;

pub struct Mesh {
    pub names: Vec<String>,
    /// Links come up within this many seconds of the start.
    ramp: f64,
    /// Restart times (seconds since the start) per node, sorted.
    flaps: Vec<Vec<f64>>,
    /// Wall-clock microseconds at the start, for handshake times.
    wall_start_us: u64,
    pub flap_count: usize,
}

/// SplitMix64: a well-mixed hash for pair and flap choices (no RNG state to share).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A number in [0, 1) from `x`.
pub fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

fn pair(i: usize, j: usize, salt: u64) -> u64 {
    let (a, b) = if i < j { (i, j) } else { (j, i) };
    ((a as u64) << 32 | b as u64) ^ salt.wrapping_mul(0x5851_f42d_4c95_7f2d)
}

fn addr(net: [u8; 2], i: usize) -> Option<SocketAddr> {
    let ip = Ipv4Addr::new(net[0], net[1], (i >> 8) as u8, i as u8);
    Some(SocketAddr::V4(SocketAddrV4::new(ip, 51820)))
}

impl Mesh {
    /// `churn`: the window (seconds since the start) in which one node restarts every `flap_every`.
    pub fn new(names: Vec<String>, ramp: Duration, churn: (f64, f64), flap_every: Duration) -> Mesh {
        let mut flaps = vec![Vec::new(); names.len()];
        let mut flap_count = 0;
        let step = flap_every.as_secs_f64();
        if !names.is_empty() && step > 0.0 {
            let mut t = churn.0;
            let mut k = 0u64;
            while t < churn.1 {
                let node = (mix(k ^ 0xf1a9) % names.len() as u64) as usize;
                flaps[node].push(t);
                flap_count += 1;
                k += 1;
                t += step;
            }
        }
        let wall_start_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Mesh { names, ramp: ramp.as_secs_f64().max(1.0), flaps, wall_start_us, flap_count }
    }

    fn last_flap(&self, node: usize, t: f64) -> Option<f64> {
        let f = &self.flaps[node];
        let n = f.partition_point(|x| *x <= t);
        n.checked_sub(1).map(|k| f[k])
    }

    /// The link between `i` and `j` at `t`: its state and, when up, the handshake time (seconds).
    pub fn link(&self, i: usize, j: usize, t: f64) -> (LinkState, Option<f64>) {
        let flap = match (self.last_flap(i, t), self.last_flap(j, t)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        match flap {
            None => {
                let up_at = 1.0 + unit(pair(i, j, 1)) * (self.ramp - 1.0);
                if t >= up_at {
                    (LinkState::Up, Some(up_at))
                } else if t >= 0.6 * up_at {
                    (LinkState::Handshaking, None)
                } else {
                    (LinkState::Punching, None)
                }
            }
            Some(f) => {
                // Peers notice at different moments (keepalive phase) and handshake again within seconds.
                let down = 2.0 + 2.0 * unit(pair(i, j, 2));
                let up = down + 1.0;
                match t - f {
                    d if d < down => (LinkState::Down, None),
                    d if d < up => (LinkState::Handshaking, None),
                    _ => (LinkState::Up, Some(f + up)),
                }
            }
        }
    }

    /// Agent `i`'s snapshot at `t`, written in place (peers sorted by name, as the driver does).
    pub fn update(&self, i: usize, t: f64, snap: &mut Snapshot) {
        if snap.peers.len() + 1 != self.names.len() {
            snap.reflexive = addr([203, 0], i);
            snap.rolodexes = vec![(SocketAddr::from(([192, 0, 2, 1], 6264)), true)];
            snap.peers = (0..self.names.len())
                .filter(|j| *j != i)
                .map(|j| PeerSnapshot {
                    name: self.names[j].clone(),
                    state: LinkState::Punching,
                    endpoint: None,
                    rtt: None,
                    last_handshake_us: 0,
                    rx_bytes: 0,
                    tx_bytes: 0,
                })
                .collect();
            snap.peers.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let mut j = 0;
        for p in &mut snap.peers {
            if j == i {
                j += 1;
            }
            let (state, handshake) = self.link(i, j, t);
            p.state = state;
            p.endpoint = (state != LinkState::Punching).then(|| addr([198, 18], j)).flatten();
            p.rtt = (state == LinkState::Up).then(|| Duration::from_micros(800 + (j as u64 % 4000)));
            p.last_handshake_us = handshake.map_or(0, |h| self.wall_start_us + (h * 1e6) as u64);
            if state == LinkState::Up {
                // Keepalives and a little traffic: counters move all the time (never worth a write alone).
                p.rx_bytes += 148;
                p.tx_bytes += 148;
            }
            j += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(n: usize) -> Mesh {
        let names = (0..n).map(|i| format!("node-{i:05}")).collect();
        Mesh::new(names, Duration::from_secs(20), (100.0, 160.0), Duration::from_secs(2))
    }

    #[test]
    fn links_come_up_during_the_ramp_and_are_symmetric() {
        let m = mesh(50);
        for i in 0..50 {
            for j in (0..50).filter(|j| *j != i) {
                assert_eq!(m.link(i, j, 0.5).0, LinkState::Punching);
                assert_eq!(m.link(i, j, 25.0), m.link(j, i, 25.0));
                assert_eq!(m.link(i, j, 25.0).0, LinkState::Up);
            }
        }
        assert_eq!(m.flap_count, 30);
    }

    #[test]
    fn a_restart_takes_every_link_of_the_node_down_then_up() {
        let m = mesh(20);
        let (node, t) = m.flaps.iter().enumerate().find_map(|(n, f)| Some((n, *f.first()?))).unwrap();
        let other = (node + 1) % 20;
        assert_eq!(m.link(other, node, t + 0.1).0, LinkState::Down);
        let (state, hs) = m.link(other, node, t + 5.0);
        assert!(state == LinkState::Up && hs.is_some_and(|h| h > t), "{state:?} {hs:?}");
    }

    #[test]
    fn snapshots_list_every_other_member_sorted() {
        let m = mesh(5);
        let mut s = Snapshot::default();
        m.update(2, 30.0, &mut s);
        let names: Vec<_> = s.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["node-00000", "node-00001", "node-00003", "node-00004"]);
        assert!(s.peers.iter().all(|p| p.state == LinkState::Up && p.endpoint.is_some()));
        assert_eq!(s.registered(), 1);
        assert_eq!(s.peers[2].endpoint, addr([198, 18], 3), "peer index skips the agent itself");
    }
}
