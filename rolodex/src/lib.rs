//! Rolomesh discovery: the wire protocol, the sans-IO server and client state machines, and the UDP service.

pub mod client;
pub mod codec;
pub mod http;
pub mod keys;
pub mod loadgen;
pub mod net;
pub mod proto;
pub mod replay;
pub mod server;
pub mod service;

pub use net::IpNet;
