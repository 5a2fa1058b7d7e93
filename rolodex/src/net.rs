//! `IpNet`: an IPv4 or IPv6 address with a prefix length, shared by the protocol, the agent's route table
//! and its configuration.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address with a prefix length, e.g. `10.244.1.0/24` or `100.64.0.1/10`.
///
/// The address keeps its host bits as written, because an interface address such as
/// `100.64.0.1/10` means both "my address" and "the overlay network"; [`IpNet::network`] clears
/// them, and the agent's route table always stores the cleared form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

/// A CIDR string or prefix length that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct IpNetError {
    input: String,
    reason: String,
}

impl IpNetError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        Self { input: input.to_owned(), reason: reason.into() }
    }

    /// Why the input was rejected, without the input itself.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl IpNet {
    /// `addr/len`; fails when `len` exceeds 32 (IPv4) or 128 (IPv6).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, IpNetError> {
        let max = max_len(&addr);
        if len > max {
            let input = format!("{addr}/{len}");
            return Err(IpNetError::new(&input, format!("prefix length {len} exceeds {max}")));
        }
        Ok(Self { addr, len })
    }

    /// The /32 or /128 route to one address.
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, len: max_len(&addr) }
    }

    /// The address as written (host bits included).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// True for /32 and /128.
    pub fn is_host(&self) -> bool {
        self.len == max_len(&self.addr)
    }

    /// The same prefix with the host bits cleared: `100.64.0.1/10` -> `100.64.0.0/10`.
    pub fn network(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(self.len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(self.len))),
        };
        Self { addr, len: self.len }
    }

    /// Whether `ip` falls inside this prefix (an IPv4 prefix never contains an IPv6 address).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = mask_v4(self.len);
                u32::from(n) & m == u32::from(*a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = mask_v6(self.len);
                u128::from(n) & m == u128::from(*a) & m
            }
            _ => false,
        }
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

pub fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0)
}

pub fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0)
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((addr, len)) = s.split_once('/') else {
            return Err(IpNetError::new(s, "missing /prefix length"));
        };
        let addr: IpAddr =
            addr.parse().map_err(|_| IpNetError::new(s, format!("{addr:?} is not an IP address")))?;
        // Digits only: u8::from_str would also accept "+8".
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IpNetError::new(s, format!("prefix length {len:?} is not a number")));
        }
        let len: u16 =
            len.parse().map_err(|_| IpNetError::new(s, format!("prefix length {len:?} is not a number")))?;
        let max = max_len(&addr);
        match u8::try_from(len) {
            Ok(len) if len <= max => Ok(Self { addr, len }),
            _ => Err(IpNetError::new(s, format!("prefix length {len} exceeds {max}"))),
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}
