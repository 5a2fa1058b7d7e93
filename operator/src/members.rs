//! One `MeshMember` per selected Node, and overlay address allocation.
//!
//! Allocation keeps its state in the API (the members' `spec.overlayAddresses`), never in memory: list the
//! network's members, collect the used addresses, start at `fnv1a(nodeName) mod size` inside the pool and
//! probe upward (wrapping) for the first free address. An address once written is never changed.
//!
//! The planning here is pure ([`plan`]); [`sync`] reads the API, plans, and writes.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;

use crds::{AgentSpec, MeshMember, OverlaySpec};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Taint, Toleration};
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use tracing::{info, warn};

use crate::controller::Context;
use crate::resources::{self, LABEL_MANAGED_BY, LABEL_NETWORK, MANAGED_BY, Owner};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------------------
// Address pools and allocation (pure)

/// An IPv4 or IPv6 prefix, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub v6: bool,
    /// The network address as an integer (IPv4 in the low 32 bits).
    pub base: u128,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) =
            s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (ADDRESS/PREFIX)"))?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{s:?}: bad prefix length {prefix:?}"))?;
        let bits = if ip.is_ipv6() { 128 } else { 32 };
        if prefix > bits {
            return Err(format!("{s:?}: prefix length {prefix} exceeds {bits}"));
        }
        let host_bits = bits - prefix;
        let mask = if host_bits >= 128 { 0 } else { !((1u128 << host_bits) - 1) };
        let base = match ip {
            IpAddr::V4(a) => u128::from(u32::from(a)) & mask & u128::from(u32::MAX),
            IpAddr::V6(a) => u128::from(a) & mask,
        };
        Ok(Cidr { v6: ip.is_ipv6(), base, prefix })
    }
}

impl Cidr {
    fn bits(self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }
    /// First and last address, inclusive.
    pub fn bounds(self) -> (u128, u128) {
        let host_bits = self.bits() - self.prefix;
        let span = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
        (self.base, self.base + span)
    }
    pub fn contains(self, other: Cidr) -> bool {
        let ((a, b), (c, d)) = (self.bounds(), other.bounds());
        self.v6 == other.v6 && a <= c && d <= b
    }
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn to_ip(v6: bool, n: u128) -> IpAddr {
    if v6 { IpAddr::V6(n.into()) } else { IpAddr::V4(std::net::Ipv4Addr::from(n as u32)) }
}

/// The usable addresses of one family: disjoint ranges `(first, count)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub v6: bool,
    ranges: Vec<(u128, u128)>,
}

impl Pool {
    pub fn size(&self) -> u128 {
        self.ranges.iter().fold(0u128, |acc, (_, n)| acc.saturating_add(*n))
    }
    fn contains(&self, ip: IpAddr) -> bool {
        let n = to_int(ip);
        ip.is_ipv6() == self.v6 && self.ranges.iter().any(|(first, count)| n >= *first && n - first < *count)
    }
    /// The `i`th usable address, `i < size()`.
    fn nth(&self, mut i: u128) -> Option<IpAddr> {
        for (first, count) in &self.ranges {
            if i < *count {
                return Some(to_ip(self.v6, first + i));
            }
            i -= count;
        }
        None
    }
}

/// One pool per family of `overlay.cidrs` that `allocateFrom` (default: the cidrs themselves) covers.
///
/// Each range loses its first and last address (when it has four or more), and the overlay's network and
/// broadcast addresses are never handed out. Ranges nested in another range are merged into it. A family
/// with a CIDR but no allocateFrom range gets no pool: this cluster hands out no address of that family.
pub fn pools(overlay: &OverlaySpec) -> Result<Vec<Pool>, String> {
    let cidrs = overlay.cidrs.iter().map(|c| c.parse()).collect::<Result<Vec<Cidr>, _>>()?;
    if cidrs.is_empty() {
        return Err("overlay.cidrs is empty".into());
    }
    let from = if overlay.allocate_from.is_empty() {
        cidrs.clone()
    } else {
        overlay.allocate_from.iter().map(|c| c.parse()).collect::<Result<Vec<Cidr>, _>>()?
    };
    let mut out = Vec::new();
    for overlay in &cidrs {
        let mut ranges: Vec<Cidr> = Vec::new();
        for r in from.iter().filter(|r| r.v6 == overlay.v6) {
            if !overlay.contains(*r) {
                return Err(format!("allocateFrom range {} is outside the overlay", show(*r)));
            }
            if !ranges.iter().any(|o| o.contains(*r)) {
                ranges.retain(|o| !r.contains(*o));
                ranges.push(*r);
            }
        }
        ranges.sort_by_key(|r| r.base);
        let ranges: Vec<_> = ranges.into_iter().filter_map(|r| usable(r, *overlay)).collect();
        if !ranges.is_empty() {
            out.push(Pool { v6: overlay.v6, ranges });
        }
    }
    Ok(out)
}

fn show(c: Cidr) -> String {
    format!("{}/{}", to_ip(c.v6, c.base), c.prefix)
}

fn usable(range: Cidr, overlay: Cidr) -> Option<(u128, u128)> {
    let (mut lo, mut hi) = range.bounds();
    if hi - lo >= 3 {
        lo += 1;
        hi -= 1;
    }
    let (olo, ohi) = overlay.bounds();
    if ohi - olo >= 3 {
        if lo == olo {
            lo = lo.checked_add(1)?;
        }
        if hi == ohi {
            hi = hi.checked_sub(1)?;
        }
    }
    (lo <= hi).then(|| (lo, (hi - lo).saturating_add(1)))
}

/// 64-bit FNV-1a.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The first free address of `pool` at or after `fnv1a(seed) mod size`, wrapping around.
pub fn allocate(pool: &Pool, seed: &str, used: &HashSet<IpAddr>) -> Result<IpAddr, String> {
    let size = pool.size();
    let taken = used.iter().filter(|a| pool.contains(**a)).count() as u128;
    let exhausted = || {
        let family = if pool.v6 { "IPv6" } else { "IPv4" };
        format!("all {size} {family} addresses of the pool are in use")
    };
    if size == 0 {
        return Err(exhausted());
    }
    let start = u128::from(fnv1a(seed)) % size;
    // Among `taken + 1` distinct candidates at least one is free, unless the pool is full.
    for k in 0..size.min(taken + 1) {
        let i = if start >= size - k { start - (size - k) } else { start + k };
        match pool.nth(i) {
            Some(a) if !used.contains(&a) => return Ok(a),
            _ => {}
        }
    }
    Err(exhausted())
}

// ---------------------------------------------------------------------------------------------------------
// Which Nodes get a member (pure)

/// Taints that Kubernetes sets and clears by itself as a Node's health changes (not-ready, unreachable,
/// pressure, cordon, an uninitialized cloud node). They never unselect a Node: a NotReady blip must not
/// delete its member and hand out its address again.
fn transient(taint: &Taint) -> bool {
    taint.key.starts_with("node.kubernetes.io/")
        || taint.key == "node.cloudprovider.kubernetes.io/uninitialized"
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref() {
        Some("Exists") => effect_ok && (key.is_empty() || key == taint.key),
        _ => {
            effect_ok
                && key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// Whether `node` gets a member: the agent's nodeSelector matches and every lasting NoSchedule/NoExecute
/// taint (e.g. the control-plane one) is tolerated, as for the agent DaemonSet. A Node being deleted is not
/// selected.
pub fn selects(agent: &AgentSpec, node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if !agent.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or(&[]);
    taints
        .iter()
        .filter(|t| (t.effect == "NoSchedule" || t.effect == "NoExecute") && !transient(t))
        .all(|taint| agent.tolerations.iter().any(|t| tolerates(t, taint)))
}

/// The pod CIDRs of a Node (`spec.podCIDRs`, else `spec.podCIDR`).
pub fn pod_cidrs(node: &Node) -> Vec<String> {
    let Some(spec) = node.spec.as_ref() else { return vec![] };
    match (&spec.pod_cidrs, &spec.pod_cidr) {
        (Some(list), _) if !list.is_empty() => list.clone(),
        (_, Some(one)) if !one.is_empty() => vec![one.clone()],
        _ => vec![],
    }
}

// ---------------------------------------------------------------------------------------------------------
// Planning (pure)

/// A Node that should have a member.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub node: String,
    pub routes: Vec<String>,
}

/// A member to write: create, or fix up an existing one (addresses only ever added for a missing family).
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub name: String,
    /// `None` for a member of a host outside the cluster (only its addresses are filled in).
    pub node: Option<String>,
    pub addresses: Vec<String>,
    pub routes: Vec<String>,
    pub created: bool,
    /// Addresses allocated by this plan.
    pub allocated: Vec<String>,
}

/// A member that could not be written, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub member: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Members of Nodes that are gone or no longer selected.
    pub deletes: Vec<String>,
    /// Members that could not be planned (exhausted pool, name too long).
    pub failures: Vec<Failure>,
}

fn is_ours(m: &MeshMember) -> bool {
    m.metadata.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)).is_some_and(|v| v == MANAGED_BY)
}

/// Plans the members of the network `owner` given the selected Nodes and the network's current members.
pub fn plan(owner: &Owner, pools: &[Pool], wanted: &[Wanted], members: &[MeshMember]) -> Plan {
    let mut used: HashSet<IpAddr> =
        members.iter().flat_map(|m| &m.spec.overlay_addresses).filter_map(|a| a.parse().ok()).collect();
    let by_name: BTreeMap<&str, &MeshMember> =
        members.iter().filter_map(|m| Some((m.metadata.name.as_deref()?, m))).collect();
    let mut plan = Plan::default();
    let mut wanted: Vec<&Wanted> = wanted.iter().collect();
    wanted.sort_by(|a, b| a.node.cmp(&b.node));
    let mut covered = HashSet::new();

    // Adds an address of every pool's family that `have` lacks; seeded by the node (or host member) name.
    let mut fill = |seed: &str, member: &str, have: &[String], plan: &mut Plan| {
        let mut addresses = have.to_vec();
        let mut allocated = Vec::new();
        for pool in pools {
            let has_family =
                have.iter().filter_map(|a| a.parse::<IpAddr>().ok()).any(|a| a.is_ipv6() == pool.v6);
            if has_family {
                continue;
            }
            match allocate(pool, seed, &used) {
                Ok(a) => {
                    used.insert(a);
                    addresses.push(a.to_string());
                    allocated.push(a.to_string());
                }
                Err(e) => {
                    let message = format!("member {member}: {e}");
                    plan.failures.push(Failure { member: member.into(), message });
                    return None;
                }
            }
        }
        Some((addresses, allocated))
    };

    for w in wanted {
        let name = resources::member_name(&owner.name, &w.node);
        if name.len() > 253 {
            let message = format!("node {}: member name {name:?} is longer than 253 characters", w.node);
            plan.failures.push(Failure { member: name, message });
            continue;
        }
        covered.insert(name.clone());
        let existing = by_name.get(name.as_str()).copied();
        let have = existing.map(|m| m.spec.overlay_addresses.clone()).unwrap_or_default();
        let Some((addresses, allocated)) = fill(&w.node, &name, &have, &mut plan) else { continue };
        let desired = resources::mesh_member(owner, &name, Some(&w.node), &addresses, &w.routes);
        let up_to_date = existing.is_some_and(|m| {
            m.spec == desired.spec
                && desired
                    .metadata
                    .labels
                    .iter()
                    .flatten()
                    .all(|(k, v)| m.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
                && m.metadata.owner_references.iter().flatten().any(|r| r.uid == owner.reference.uid)
        });
        if !up_to_date {
            plan.writes.push(Write {
                name,
                node: Some(w.node.clone()),
                addresses,
                routes: w.routes.clone(),
                created: existing.is_none(),
                allocated,
            });
        }
    }

    for m in members {
        let Some(name) = m.metadata.name.as_deref() else { continue };
        if covered.contains(name) {
            continue;
        }
        if m.spec.node_name.is_some() && is_ours(m) {
            plan.deletes.push(name.to_string());
        } else if m.spec.node_name.is_none() {
            // A host outside the cluster: fill in missing addresses, leave the rest to its owner.
            if let Some((addresses, allocated)) = fill(name, name, &m.spec.overlay_addresses, &mut plan)
                && !allocated.is_empty()
            {
                plan.writes.push(Write {
                    name: name.to_string(),
                    node: None,
                    addresses,
                    routes: vec![],
                    created: false,
                    allocated,
                });
            }
        }
    }
    plan
}

// ---------------------------------------------------------------------------------------------------------
// Applying the plan

/// Outcome of one [`sync`]: the network's members after the writes, and what failed.
pub struct Synced {
    pub members: Vec<MeshMember>,
    pub failures: Vec<Failure>,
}

/// The network's members (all in its namespace whose `spec.networkRef` names it), from the API.
pub async fn list(ctx: &Context, owner: &Owner) -> Result<Vec<MeshMember>> {
    let api: Api<MeshMember> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let all = api.list(&ListParams::default()).await?;
    Ok(all.items.into_iter().filter(|m| m.spec.network_ref.name == owner.name).collect())
}

/// Creates, fixes and deletes the network's members to match the selected Nodes.
pub async fn sync(
    ctx: &Context,
    owner: &Owner,
    regarding: &ObjectReference,
    overlay: &OverlaySpec,
    agent: &AgentSpec,
) -> Result<Synced> {
    let pools = pools(overlay).map_err(Error::InvalidSpec)?;
    let nodes = ctx.nodes().await?;
    let wanted: Vec<Wanted> = nodes
        .iter()
        .filter(|n| selects(agent, n))
        .filter_map(|n| {
            let node = n.metadata.name.clone()?;
            let routes = if agent.advertise_pod_cidrs { pod_cidrs(n) } else { vec![] };
            Some(Wanted { node, routes })
        })
        .collect();
    let mut members = list(ctx, owner).await?;
    let plan = plan(owner, &pools, &wanted, &members);

    let api: Api<MeshMember> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let pp = PatchParams::apply(crate::MANAGER).force();
    for w in &plan.writes {
        let member = resources::mesh_member(owner, &w.name, w.node.as_deref(), &w.addresses, &w.routes);
        let written = api.patch(&w.name, &pp, &Patch::Apply(&member)).await?;
        let related = Some(written.object_ref(&()));
        let node = w.node.as_deref().unwrap_or("-");
        if !w.allocated.is_empty() {
            ctx.metrics.members_allocated.inc_by(w.allocated.len() as u64);
            let note = format!("allocated {} to member {} (node {node})", w.allocated.join(", "), w.name);
            info!(network = %owner.name, member = %w.name, node, addresses = ?w.allocated, created = w.created, "allocated");
            ctx.event(regarding, related, EventType::Normal, "Allocated", "Allocate", note).await;
        } else {
            info!(network = %owner.name, member = %w.name, node, "updated member");
        }
        members.retain(|m| m.metadata.name.as_deref() != Some(w.name.as_str()));
        members.push(written);
    }
    for name in &plan.deletes {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        ctx.metrics.members_deleted.inc();
        info!(network = %owner.name, member = %name, "deleted member: its node is gone or no longer selected");
        let note = format!("deleted MeshMember {name}: its node is gone or no longer selected");
        let related = member_ref(name, &owner.namespace);
        ctx.event(regarding, Some(related), EventType::Normal, "Deleted", "Delete", note).await;
        members.retain(|m| m.metadata.name.as_deref() != Some(name.as_str()));
    }
    for f in &plan.failures {
        warn!(network = %owner.name, member = %f.member, failure = %f.message, "member not written");
        let related = member_ref(&f.member, &owner.namespace);
        let note = f.message.clone();
        ctx.event(regarding, Some(related), EventType::Warning, "AllocationFailed", "Allocate", note).await;
    }
    Ok(Synced { members, failures: plan.failures })
}

fn member_ref(name: &str, namespace: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(MeshMember::api_version(&()).into()),
        kind: Some(MeshMember::kind(&()).into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

/// Deletes every member the operator created for the network (finalizer cleanup). Returns how many.
pub async fn delete_all(ctx: &Context, owner: &Owner) -> Result<usize> {
    let api: Api<MeshMember> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_NETWORK}={}", owner.name);
    let ours = api.list(&ListParams::default().labels(&selector)).await?;
    let mut n = 0;
    for m in ours.items.iter().filter(|m| m.spec.network_ref.name == owner.name) {
        let Some(name) = m.metadata.name.as_deref() else { continue };
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => n += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
