//! Rolomesh node agent: moves packets between a TUN device and authenticated UDP tunnels to peers.

pub mod config;
pub mod crypto;
pub mod datapath;
pub mod driver;
pub mod dtls;
pub mod engine;
pub mod gro;
pub mod iface;
pub mod kube;
pub mod metrics;
pub mod peer;
pub mod probe;
pub mod routes;
pub mod sysroutes;
pub mod tun;
pub mod udp;
