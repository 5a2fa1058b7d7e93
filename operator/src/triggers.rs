//! Which Node and MeshMember events reconcile the MeshNetworks, and how often.
//!
//! Both kinds change far more often than anything a reconcile reads: kubelets heartbeat, and every agent
//! refreshes its member's status. [`Changes`] drops the events that change nothing the reconcile reads;
//! [`throttle`] merges the members' remaining ones into at most one trigger per [`WINDOW`]. The controller's
//! debounce alone would not do: it waits for a quiet gap, which a thousand agents whose links flap may never
//! leave (kube-runtime documents the starvation), and every reconcile lists all the network's members.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use crds::MeshMember;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

/// Member changes reconcile at most this often, and at most this long after the change. The network's status
/// is an aggregate of members' statuses that are themselves written at most every 10 s.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Tells which events matter: an object added or deleted, or a change of its fingerprint. After a relist
/// everything is reconciled.
pub struct Changes<K: Resource<DynamicType = ()>> {
    fingerprint: fn(&K) -> u64,
    seen: HashMap<ObjectRef<K>, u64>,
    relisting: HashMap<ObjectRef<K>, u64>,
}

impl<K: Resource<DynamicType = ()>> Changes<K> {
    pub fn new(fingerprint: fn(&K) -> u64) -> Self {
        Changes { fingerprint, seen: HashMap::new(), relisting: HashMap::new() }
    }

    /// Whether `event` should reconcile.
    pub fn relevant(&mut self, event: &watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(o) => {
                let fp = (self.fingerprint)(o);
                self.seen.insert(ObjectRef::from_obj(o), fp) != Some(fp)
            }
            watcher::Event::Delete(o) => {
                self.seen.remove(&ObjectRef::from_obj(o));
                true
            }
            watcher::Event::Init => {
                self.relisting.clear();
                false
            }
            watcher::Event::InitApply(o) => {
                self.relisting.insert(ObjectRef::from_obj(o), (self.fingerprint)(o));
                false
            }
            watcher::Event::InitDone => {
                self.seen = std::mem::take(&mut self.relisting);
                true
            }
        }
    }
}

/// What member selection reads of a Node: labels, taints, pod CIDRs, deletion mark (not its status).
pub fn node_fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    if let Some(spec) = &node.spec {
        (&spec.pod_cidr, &spec.pod_cidrs).hash(&mut h);
        for t in spec.taints.iter().flatten() {
            (&t.key, &t.value, &t.effect).hash(&mut h);
        }
    }
    h.finish()
}

/// What a reconcile reads of a member: spec, labels, owners, deletion mark, and the status as far as the
/// network's counts go (Ready, Connected, connected links); not the heartbeat, counters or endpoints.
pub fn member_fingerprint(m: &MeshMember) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(&m.spec).unwrap_or_default().hash(&mut h);
    m.metadata.labels.hash(&mut h);
    for r in m.metadata.owner_references.iter().flatten() {
        r.uid.hash(&mut h);
    }
    m.metadata.deletion_timestamp.is_some().hash(&mut h);
    for c in m.status.iter().flat_map(|s| &s.conditions) {
        (&c.type_, &c.status).hash(&mut h);
    }
    crate::status::connected_links(m).hash(&mut h);
    h.finish()
}

/// Passes triggers on at most once per `window`: the first one opens a window, and everything arriving
/// before it closes becomes one trigger at its end. A steady stream still gets through every `window`.
pub fn throttle(
    triggers: impl Stream<Item = ()> + Send + 'static,
    window: Duration,
) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(triggers.boxed(), move |mut s| async move {
        s.next().await?;
        let close = tokio::time::sleep(window);
        tokio::pin!(close);
        loop {
            tokio::select! {
                _ = &mut close => break,
                next = s.next() => if next.is_none() { break },
            }
        }
        Some(((), s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{node, node_member};
    use crds::MeshMemberStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn node_changes_ignore_heartbeats() {
        let mut c = Changes::new(node_fingerprint);
        let n1 = node("n1", &[], &["10.244.1.0/24"], &[]);
        assert!(!c.relevant(&watcher::Event::Init));
        assert!(!c.relevant(&watcher::Event::InitApply(n1.clone())));
        assert!(c.relevant(&watcher::Event::InitDone), "a (re)list reconciles all");
        let mut heartbeat = n1.clone();
        heartbeat.metadata.resource_version = Some("99".into());
        heartbeat.status = Some(Default::default());
        assert!(!c.relevant(&watcher::Event::Apply(heartbeat)));
        assert!(c.relevant(&watcher::Event::Apply(node("n2", &[], &[], &[]))), "new node");
        assert!(
            c.relevant(&watcher::Event::Apply(node("n1", &[("mesh", "yes")], &["10.244.1.0/24"], &[]))),
            "labels"
        );
        assert!(c.relevant(&watcher::Event::Apply(node("n2", &[], &[], &[("t", "NoSchedule")]))), "taints");
        assert!(c.relevant(&watcher::Event::Delete(node("n2", &[], &[], &[]))));
        assert!(
            c.relevant(&watcher::Event::Apply(node("n2", &[], &[], &[("t", "NoSchedule")]))),
            "back again"
        );
    }

    fn with_status(ready: &str, connected_peers: i32, heartbeat: i64) -> MeshMember {
        let mut m = node_member("n1", &["100.64.0.7"]);
        let t = Time(Timestamp::from_second(heartbeat).unwrap());
        let cond = crds::Condition {
            type_: "Ready".into(),
            status: ready.into(),
            reason: "R".into(),
            message: format!("at {heartbeat}"),
            observed_generation: None,
            last_transition_time: t.clone(),
        };
        m.status = Some(MeshMemberStatus {
            connected_peers: Some(connected_peers),
            conditions: vec![cond],
            last_heartbeat: Some(t),
            ..Default::default()
        });
        m
    }

    #[test]
    fn member_changes_ignore_heartbeats_but_not_what_the_status_counts() {
        let mut c = Changes::new(member_fingerprint);
        assert!(c.relevant(&watcher::Event::Apply(with_status("True", 5, 100))), "new member");
        assert!(!c.relevant(&watcher::Event::Apply(with_status("True", 5, 160))), "heartbeat");
        assert!(c.relevant(&watcher::Event::Apply(with_status("True", 4, 170))), "a link went down");
        assert!(c.relevant(&watcher::Event::Apply(with_status("False", 4, 180))), "not ready");
        let mut moved = with_status("False", 4, 180);
        moved.spec.overlay_addresses = vec!["100.64.0.8".into()];
        assert!(c.relevant(&watcher::Event::Apply(moved)), "spec edited");
        assert!(c.relevant(&watcher::Event::Delete(with_status("False", 4, 180))));
    }

    #[tokio::test]
    async fn a_burst_is_one_trigger_and_a_steady_stream_still_gets_through() {
        let burst = throttle(futures::stream::iter(vec![(); 50]), Duration::from_millis(20));
        assert_eq!(burst.collect::<Vec<_>>().await.len(), 1);
        // A trigger every 5 ms forever: a debounce of 20 ms would never fire; the throttle fires each window.
        let steady = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Some(((), ()))
        });
        let three = throttle(steady, Duration::from_millis(20)).take(3).collect::<Vec<_>>();
        let got = tokio::time::timeout(Duration::from_secs(10), three).await;
        assert_eq!(got.map(|v| v.len()), Ok(3));
    }
}
