//! What the engine looks like at one moment, as the status writer needs it: copied by the driver on its
//! one-second tick, never on the packet path.

use std::net::SocketAddr;
use std::time::Duration;

use crate::engine::Engine;
use crate::peer::LinkState;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Our public address as the rolodex sees it.
    pub reflexive: Option<SocketAddr>,
    /// Each configured rolodex and whether we are registered with it.
    pub rolodexes: Vec<(SocketAddr, bool)>,
    /// Sorted by name.
    pub peers: Vec<PeerSnapshot>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PeerSnapshot {
    pub name: String,
    pub state: LinkState,
    pub endpoint: Option<SocketAddr>,
    pub rtt: Option<Duration>,
    /// Wall-clock microseconds of the last completed handshake; 0 for none.
    pub last_handshake_us: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl Snapshot {
    pub fn of(engine: &Engine) -> Self {
        let mut peers: Vec<PeerSnapshot> = engine
            .peers()
            .map(|p| PeerSnapshot {
                name: p.name.clone(),
                state: p.state,
                endpoint: p.endpoint,
                rtt: p.stats.rtt,
                last_handshake_us: p.stats.last_handshake_us,
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        Self { reflexive: engine.reflexive(), rolodexes: engine.rolodexes().collect(), peers }
    }

    /// Registered with at least one rolodex.
    pub fn registered(&self) -> usize {
        self.rolodexes.iter().filter(|(_, up)| *up).count()
    }
}
