//! IP prefixes shared by the protocol, the agent's route table and its configuration.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 prefix with its host bits cleared, e.g. `100.64.0.0/10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("invalid CIDR {0:?}: expected ADDRESS/PREFIX-LENGTH")]
    Syntax(String),
    #[error("invalid CIDR {0:?}: bad address")]
    Address(String),
    #[error("invalid CIDR {text:?}: prefix length {len} exceeds {max}")]
    Length { text: String, len: u32, max: u8 },
}

impl IpNet {
    /// Builds a prefix, clearing host bits so that equal networks compare equal.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, IpNetError> {
        let max = max_len(addr);
        if len > max {
            return Err(IpNetError::Length { text: format!("{addr}/{len}"), len: len.into(), max });
        }
        Ok(Self { addr: mask(addr, len), len })
    }

    /// A /32 or /128 host route.
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, len: max_len(addr) }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// Clears the bits past `len`; `len` must be valid for the family.
pub fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s.split_once('/').ok_or_else(|| IpNetError::Syntax(s.to_string()))?;
        let addr: IpAddr = a.parse().map_err(|_| IpNetError::Address(s.to_string()))?;
        let len: u32 = l.parse().map_err(|_| IpNetError::Syntax(s.to_string()))?;
        let max = max_len(addr);
        if len > u32::from(max) {
            return Err(IpNetError::Length { text: s.to_string(), len, max });
        }
        Self::new(addr, len as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let n: IpNet = "10.1.2.3/8".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains("10.200.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let v6: IpNet = "fd52::1/64".parse().unwrap();
        assert_eq!(v6.to_string(), "fd52::/64");
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_cidrs_with_reason() {
        let e = "10.0.0.0/33".parse::<IpNet>().unwrap_err().to_string();
        assert_eq!(e, "invalid CIDR \"10.0.0.0/33\": prefix length 33 exceeds 32");
        assert!("10.0.0.0".parse::<IpNet>().is_err());
        assert!("10.0.0.300/8".parse::<IpNet>().is_err());
        assert!("fd00::/129".parse::<IpNet>().is_err());
        assert!("1.2.3.4/x".parse::<IpNet>().is_err());
    }
}
