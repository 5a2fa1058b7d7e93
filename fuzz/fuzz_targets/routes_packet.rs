//! Addresses from raw IP packets, CIDR parsing, and the longest-prefix-match table.
//!
//! Mode by first byte:
//! * packet: `dst_of_packet` / `src_of_packet` on the bytes, checked against the header layout;
//! * cidr: the bytes as a string parsed as `IpNet`; what parses must print and parse back to itself, and
//!   its network must contain its own address;
//! * table: inserts, removals and lookups on `RouteTable`, checked against a linear-scan model.

#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent::routes::{IpNet, RouteTable, dst_of_packet, src_of_packet};
use libfuzzer_sys::fuzz_target;
use rolomesh_fuzz::{Unstructured, ipnet};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => packet(rest),
        1 => cidr(rest),
        _ => {
            let _ = table(&mut Unstructured::new(rest));
        }
    }
});

fn packet(p: &[u8]) {
    let (dst, src) = (dst_of_packet(p), src_of_packet(p));
    assert_eq!(dst.is_some(), src.is_some(), "src and dst disagree on validity");
    match (dst, src) {
        (Some(IpAddr::V4(d)), Some(IpAddr::V4(s))) => {
            assert_eq!(p[0] >> 4, 4);
            let ihl = usize::from(p[0] & 0xf) * 4;
            assert!(ihl >= 20 && p.len() >= ihl);
            assert_eq!(d.octets(), p[16..20]);
            assert_eq!(s.octets(), p[12..16]);
        }
        (Some(IpAddr::V6(d)), Some(IpAddr::V6(s))) => {
            assert_eq!(p[0] >> 4, 6);
            assert!(p.len() >= 40);
            assert_eq!(d.octets(), p[24..40]);
            assert_eq!(s.octets(), p[8..24]);
        }
        (None, None) => {
            let v = p.first().map(|b| b >> 4);
            let ok4 =
                v == Some(4) && usize::from(p[0] & 0xf) * 4 >= 20 && p.len() >= usize::from(p[0] & 0xf) * 4;
            let ok6 = v == Some(6) && p.len() >= 40;
            assert!(!ok4 && !ok6, "well-formed header rejected");
        }
        other => panic!("families differ: {other:?}"),
    }
}

fn cidr(bytes: &[u8]) {
    let Ok(s) = std::str::from_utf8(bytes) else { return };
    let Ok(net) = s.parse::<IpNet>() else { return };
    let max = if net.is_ipv4() { 32 } else { 128 };
    assert!(net.prefix_len() <= max);
    let printed = net.to_string();
    assert_eq!(printed.parse::<IpNet>().as_ref(), Ok(&net), "{s:?} printed as {printed:?}");
    assert!(net.contains(&net.addr()));
    let n = net.network();
    assert!(n.contains(&net.addr()) && net.contains(&n.addr()));
    assert_eq!(n.network(), n);
    assert_eq!(net.is_host(), net.prefix_len() == max);
}

/// Linear-scan reference: the longest prefix containing `dst`.
fn model_lookup(model: &BTreeMap<(bool, u8, u128), u16>, dst: IpAddr) -> Option<u16> {
    let (v6, x) = match dst {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    };
    let bits = if v6 { 128 } else { 32 };
    model
        .iter()
        .filter(|((f, len, key), _)| {
            *f == v6 && {
                let shift = bits - u32::from(*len);
                shift >= bits || (x >> shift) == (key >> shift)
            }
        })
        .max_by_key(|((_, len, _), _)| *len)
        .map(|(_, v)| *v)
}

fn key_of(n: &IpNet) -> (bool, u8, u128) {
    let net = n.network();
    match net.addr() {
        IpAddr::V4(a) => (false, n.prefix_len(), u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, n.prefix_len(), u128::from(a)),
    }
}

fn table(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let mut t: RouteTable<u16> = RouteTable::new();
    let mut model: BTreeMap<(bool, u8, u128), u16> = BTreeMap::new();
    let mut nets: Vec<IpNet> = Vec::new();
    for _ in 0..256 {
        if u.is_empty() {
            break;
        }
        // Reuse earlier prefixes and addresses near them, so lookups and removals hit.
        let net =
            if !nets.is_empty() && u.arbitrary()? { nets[u.choose_index(nets.len())?] } else { ipnet(u)? };
        match u.int_in_range(0..=5u8)? {
            0 | 1 => {
                let v: u16 = u.arbitrary()?;
                assert_eq!(t.insert(net, v), model.insert(key_of(&net), v), "insert {net}");
                nets.push(net);
            }
            2 => assert_eq!(t.remove(net), model.remove(&key_of(&net)), "remove {net}"),
            3 => {
                let v: u16 = u.arbitrary()?;
                let before = model.len();
                model.retain(|_, x| *x != v);
                assert_eq!(t.remove_value(|x| x == v), before - model.len());
            }
            _ => {
                let host: u128 = u.arbitrary()?;
                let dst = match net.addr() {
                    IpAddr::V4(a) => {
                        let m = rolodex::net::mask_v4(net.prefix_len());
                        IpAddr::V4(Ipv4Addr::from((u32::from(a) & m) | (host as u32 & !m)))
                    }
                    IpAddr::V6(a) => {
                        let m = rolodex::net::mask_v6(net.prefix_len());
                        IpAddr::V6(Ipv6Addr::from((u128::from(a) & m) | (host & !m)))
                    }
                };
                assert_eq!(t.lookup(dst), model_lookup(&model, dst), "lookup {dst}");
                assert_eq!(t.get(net), model.get(&key_of(&net)).copied(), "get {net}");
            }
        }
        assert_eq!(t.len(), model.len());
        assert_eq!(t.is_empty(), model.is_empty());
    }
    let listed: BTreeMap<(bool, u8, u128), u16> = t.iter().map(|(n, v)| (key_of(&n), v)).collect();
    assert_eq!(listed, model, "iter");
    Ok(())
}
