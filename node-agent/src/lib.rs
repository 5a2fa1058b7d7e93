//! Rolomesh node agent: moves packets between a TUN device and authenticated UDP tunnels to peers.

pub mod config;
pub mod crypto;
pub mod dtls;
pub mod iface;
pub mod routes;
pub mod tun;
