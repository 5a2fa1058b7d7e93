//! Bounds-checked byte reader and writer for the binary wire format.
//!
//! Every read returns `DecodeError` on short or malformed input: decoding untrusted bytes never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::net::IpNet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated")]
    Truncated,
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("trailing bytes after message")]
    Trailing,
}

pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::Trailing) }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A u8-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str(&mut self, max: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.u8()? as usize;
        if len > max {
            return Err(DecodeError::Invalid(what));
        }
        std::str::from_utf8(self.bytes(len)?).map_err(|_| DecodeError::Invalid(what))
    }

    pub fn ip(&mut self) -> Result<IpAddr, DecodeError> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            _ => Err(DecodeError::Invalid("address family")),
        }
    }

    pub fn socket_addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = self.ip()?;
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    pub fn ipnet(&mut self) -> Result<IpNet, DecodeError> {
        let ip = self.ip()?;
        IpNet::new(ip, self.u8()?).map_err(|_| DecodeError::Invalid("prefix length"))
    }

    /// A u8-counted list of at most `max` items.
    pub fn list<T>(
        &mut self,
        max: usize,
        what: &'static str,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.u8()? as usize;
        if n > max {
            return Err(DecodeError::Invalid(what));
        }
        (0..n).map(|_| item(self)).collect()
    }
}

#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Callers validate lengths before encoding; `min` keeps a bad caller from corrupting the frame.
    pub fn str(&mut self, s: &str) {
        let len = s.len().min(255);
        self.u8(len as u8);
        self.bytes(&s.as_bytes()[..len]);
    }
    pub fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                self.u8(4);
                self.bytes(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.u8(6);
                self.bytes(&v6.octets());
            }
        }
    }
    pub fn socket_addr(&mut self, a: SocketAddr) {
        self.ip(a.ip());
        self.u16(a.port());
    }
    pub fn ipnet(&mut self, n: IpNet) {
        self.ip(n.addr());
        self.u8(n.prefix_len());
    }
    pub fn list<T>(&mut self, items: &[T], max: usize, mut item: impl FnMut(&mut Self, &T)) {
        let n = items.len().min(max);
        self.u8(n as u8);
        for it in &items[..n] {
            item(self, it);
        }
    }
}
