//! Overlay routing: which peer owns a destination address.
//!
//! `RouteTable` does longest-prefix match for IPv4 and IPv6 (host routes for members today, subnet
//! routes such as pod CIDRs later); `IpNet` is the prefix type shared with the configuration; the
//! packet helpers read addresses from raw IP headers coming out of the TUN device.

mod packet;
mod table;
#[cfg(test)]
mod tests;

pub use packet::{dst_of_packet, src_of_packet};
pub use rolodex::net::{IpNet, IpNetError};
pub use table::RouteTable;
