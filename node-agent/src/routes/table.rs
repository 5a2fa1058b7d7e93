//! Longest-prefix-match table.
//!
//! One hash map per prefix length, probed from the longest length present down to the shortest.
//! Overlay tables hold few distinct lengths (/32 members, a handful of subnet sizes), so a lookup
//! is one or a few hash probes and never allocates.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;

use rolodex::net::{IpNet, mask_v4, mask_v6};

/// Routes from IPv4/IPv6 prefixes to a value (typically a peer handle).
#[derive(Clone, Debug)]
pub struct RouteTable<T: Copy> {
    v4: Family<u32, T>,
    v6: Family<u128, T>,
}

impl<T: Copy> Default for RouteTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> RouteTable<T> {
    pub fn new() -> Self {
        Self { v4: Family::new(32), v6: Family::new(128) }
    }

    /// Adds or replaces the route for `prefix` (host bits are ignored); returns the old value.
    pub fn insert(&mut self, prefix: IpNet, value: T) -> Option<T> {
        let (len, addr) = (prefix.prefix_len(), prefix.addr());
        match addr {
            IpAddr::V4(a) => self.v4.insert(len, u32::from(a) & mask_v4(len), value),
            IpAddr::V6(a) => self.v6.insert(len, u128::from(a) & mask_v6(len), value),
        }
    }

    /// Removes the route for exactly `prefix`; returns its value.
    pub fn remove(&mut self, prefix: IpNet) -> Option<T> {
        let (len, addr) = (prefix.prefix_len(), prefix.addr());
        match addr {
            IpAddr::V4(a) => self.v4.remove(len, u32::from(a) & mask_v4(len)),
            IpAddr::V6(a) => self.v6.remove(len, u128::from(a) & mask_v6(len)),
        }
    }

    /// The value routed for exactly `prefix` (no longest-prefix match).
    pub fn get(&self, prefix: IpNet) -> Option<T> {
        let (len, addr) = (prefix.prefix_len(), prefix.addr());
        match addr {
            IpAddr::V4(a) => self.v4.get(len, u32::from(a) & mask_v4(len)),
            IpAddr::V6(a) => self.v6.get(len, u128::from(a) & mask_v6(len)),
        }
    }

    /// Keeps only the routes for which `keep(prefix, value)` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(IpNet, T) -> bool) {
        self.v4.retain(|len, k, v| keep(net_v4(k, len), v));
        self.v6.retain(|len, k, v| keep(net_v6(k, len), v));
    }

    /// Removes every route whose value matches (e.g. all routes of a departed peer); returns how
    /// many were removed.
    pub fn remove_value(&mut self, mut matches: impl FnMut(T) -> bool) -> usize {
        let before = self.len();
        self.retain(|_, v| !matches(v));
        before - self.len()
    }

    /// Longest-prefix match.
    pub fn lookup(&self, dst: IpAddr) -> Option<T> {
        match dst {
            IpAddr::V4(a) => self.lookup_v4(u32::from(a)),
            IpAddr::V6(a) => self.lookup_v6(u128::from(a)),
        }
    }

    /// Longest-prefix match for an IPv4 address in host byte order.
    pub fn lookup_v4(&self, dst: u32) -> Option<T> {
        self.v4.lookup(dst, mask_v4)
    }

    /// Longest-prefix match for an IPv6 address as a big-endian integer.
    pub fn lookup_v6(&self, dst: u128) -> Option<T> {
        self.v6.lookup(dst, mask_v6)
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }

    /// All routes, IPv4 first, longest prefixes first within a family.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, T)> + '_ {
        let v4 = self.v4.iter().map(|(len, k, v)| (net_v4(k, len), v));
        let v6 = self.v6.iter().map(|(len, k, v)| (net_v6(k, len), v));
        v4.chain(v6)
    }
}

fn net_v4(key: u32, len: u8) -> IpNet {
    // Lengths in the table were validated on insert; fall back to a host route rather than panic.
    let addr = IpAddr::from(std::net::Ipv4Addr::from(key));
    IpNet::new(addr, len).unwrap_or_else(|_| IpNet::host(addr))
}

fn net_v6(key: u128, len: u8) -> IpNet {
    let addr = IpAddr::from(std::net::Ipv6Addr::from(key));
    IpNet::new(addr, len).unwrap_or_else(|_| IpNet::host(addr))
}

type Map<K, T> = HashMap<K, T, BuildHasherDefault<KeyHasher>>;

/// The routes of one address family.
#[derive(Clone, Debug)]
struct Family<K, T> {
    /// Indexed by prefix length; empty maps do not allocate.
    by_len: Vec<Map<K, T>>,
    /// Prefix lengths that have routes, longest first: the lookup probe order.
    lens: Vec<u8>,
}

impl<K: Copy + Eq + Hash, T: Copy> Family<K, T> {
    fn new(max_len: u8) -> Self {
        Self { by_len: (0..=max_len).map(|_| Map::default()).collect(), lens: Vec::new() }
    }

    fn insert(&mut self, len: u8, key: K, value: T) -> Option<T> {
        let map = self.by_len.get_mut(usize::from(len))?;
        let old = map.insert(key, value);
        if let Err(pos) = self.lens.binary_search_by(|l| len.cmp(l)) {
            self.lens.insert(pos, len);
        }
        old
    }

    fn remove(&mut self, len: u8, key: K) -> Option<T> {
        let map = self.by_len.get_mut(usize::from(len))?;
        let old = map.remove(&key);
        if map.is_empty() {
            self.lens.retain(|l| *l != len);
        }
        old
    }

    fn get(&self, len: u8, key: K) -> Option<T> {
        self.by_len.get(usize::from(len))?.get(&key).copied()
    }

    fn lookup(&self, dst: K, mask: fn(u8) -> K) -> Option<T>
    where
        K: std::ops::BitAnd<Output = K>,
    {
        self.lens.iter().find_map(|&len| {
            let map = self.by_len.get(usize::from(len))?;
            map.get(&(dst & mask(len))).copied()
        })
    }

    fn retain(&mut self, mut keep: impl FnMut(u8, K, T) -> bool) {
        for (len, map) in (0u8..).zip(self.by_len.iter_mut()) {
            map.retain(|k, v| keep(len, *k, *v));
        }
        let by_len = &self.by_len;
        self.lens.retain(|l| by_len.get(usize::from(*l)).is_some_and(|m| !m.is_empty()));
    }

    fn len(&self) -> usize {
        self.by_len.iter().map(HashMap::len).sum()
    }

    fn clear(&mut self) {
        self.by_len.iter_mut().for_each(HashMap::clear);
        self.lens.clear();
    }

    fn iter(&self) -> impl Iterator<Item = (u8, K, T)> + '_ {
        self.lens.iter().flat_map(move |&len| {
            self.by_len
                .get(usize::from(len))
                .into_iter()
                .flat_map(move |m| m.iter().map(move |(k, v)| (len, *k, *v)))
        })
    }
}

/// Fast hasher for integer keys. Not keyed: keys are routes we inserted ourselves, so a peer
/// sending packets to chosen addresses cannot lengthen probe chains.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = fmix64(self.0 ^ u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 ^= u64::from(n);
    }

    fn write_u128(&mut self, n: u128) {
        // Truncations are the point: fold both halves in.
        self.0 = fmix64(self.0 ^ n as u64) ^ (n >> 64) as u64;
    }
}

/// MurmurHash3 finaliser: every input bit affects every output bit, which hashbrown needs
/// (it uses both the low bits and the top 7 bits).
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}
