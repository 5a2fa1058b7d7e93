//! The MeshNetwork controller: what it watches, the shared [`Context`], the thin [`reconcile`] (span, metrics,
//! finalizer) and the one [`error_policy`]. The work itself is in [`crate::network`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crds::{MeshMember, MeshNetwork};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret, Service};
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::metrics::Metrics;
use crate::resources::{LABEL_MANAGED_BY, LABEL_NETWORK, MANAGED_BY};
use crate::triggers::{self, Changes};
use crate::{Error, FINALIZER, Result, network};

/// Requeue after a successful reconcile, to catch drift nobody told us about.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Longest wait for the Node cache before a reconcile gives up.
const NODE_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Operator settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch this namespace only; all when `None`.
    pub namespace: Option<String>,
    /// Default image of rolodex and agent pods.
    pub image: Option<String>,
    pub agent_service_account: String,
    /// This process, in Events and the Lease.
    pub identity: String,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    nodes: Store<Node>,
    /// Consecutive failures per MeshNetwork, for the backoff.
    failures: Mutex<HashMap<ObjectRef<MeshNetwork>, u32>>,
}

impl Context {
    /// All Nodes, once the Node cache holds a complete list (a partial one would delete members).
    pub async fn nodes(&self) -> Result<Vec<Arc<Node>>> {
        match tokio::time::timeout(NODE_SYNC_TIMEOUT, self.nodes.wait_until_ready()).await {
            Ok(Ok(())) => Ok(self.nodes.state()),
            _ => Err(Error::NodesNotSynced),
        }
    }

    /// Publishes an Event about `regarding`, concerning `related` (the object created or deleted; it also
    /// keeps Events about different objects from being counted as one series). A failure to publish is
    /// logged, not returned.
    pub async fn event(
        &self,
        regarding: &ObjectReference,
        related: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: related,
        };
        if let Err(e) = self.recorder.publish(&ev, regarding).await {
            warn!(error = %e, reason, "cannot publish Event");
        }
    }

    fn record_failure(&self, obj: ObjectRef<MeshNetwork>) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(obj).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn clear_failures(&self, obj: &ObjectRef<MeshNetwork>) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(obj);
    }
}

/// One reconcile: metrics, a span, then the finalizer's Apply (reconcile) or Cleanup.
pub async fn reconcile(mn: Arc<MeshNetwork>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.count_and_measure();
    let key = ObjectRef::from_obj(&*mn);
    let ns =
        mn.namespace().ok_or_else(|| Error::InvalidSpec(format!("{} has no namespace", mn.name_any())))?;
    let span = info_span!("reconcile", network = %format!("{ns}/{}", mn.name_any()));
    let regarding = mn.object_ref(&());
    let api: Api<MeshNetwork> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, mn, |event| async {
        match event {
            Finalizer::Apply(mn) => network::reconcile(&mn, &ctx).await,
            Finalizer::Cleanup(mn) => network::cleanup(&mn, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    });
    match &result {
        Ok(_) => ctx.clear_failures(&key),
        Err(e) => {
            let note = e.to_string();
            ctx.event(&regarding, None, EventType::Warning, e.reason(), "Reconcile", note).await;
        }
    }
    result
}

/// Delay before retrying a failed reconcile: doubling from 2 s to 5 min; errors only an edit can fix wait
/// the full 5 min (the edit itself triggers a reconcile).
pub fn retry_delay(err: &Error, failures: u32) -> Duration {
    if err.needs_user_action() {
        return RESYNC;
    }
    let secs = 2u64.saturating_mul(1u64 << failures.saturating_sub(1).min(16));
    Duration::from_secs(secs).min(RESYNC)
}

pub fn error_policy(mn: Arc<MeshNetwork>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(err);
    let failures = ctx.record_failure(ObjectRef::from_obj(&*mn));
    let delay = retry_delay(err, failures);
    warn!(
        network = %format!("{}/{}", mn.namespace().unwrap_or_default(), mn.name_any()),
        error = %err, reason = err.reason(), failures, retry_in = ?delay, "reconcile failed"
    );
    Action::requeue(delay)
}

/// The MeshNetworks a Secret matters to: the one it was written for (its labels), and those whose
/// `spec.secretRef` names it (so creating or rotating a referenced Secret reconciles at once).
pub fn secret_networks(secret: &Secret, networks: &[Arc<MeshNetwork>]) -> Vec<ObjectRef<MeshNetwork>> {
    let Some(ns) = secret.namespace() else { return vec![] };
    let name = secret.name_any();
    let labels = secret.labels();
    let mut out: Vec<ObjectRef<MeshNetwork>> = networks
        .iter()
        .filter(|n| n.namespace().as_deref() == Some(ns.as_str()))
        .filter(|n| n.spec.secret_ref.as_ref().is_some_and(|r| r.name == name))
        .map(|n| ObjectRef::from_obj(&**n))
        .collect();
    if labels.get(LABEL_MANAGED_BY).is_some_and(|v| v == MANAGED_BY)
        && let Some(network) = labels.get(LABEL_NETWORK)
    {
        out.push(ObjectRef::new(network).within(&ns));
    }
    out
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// `Some(())` when a watch event should reconcile; a watch error is logged (the watcher retries).
fn relevant<K: Resource<DynamicType = ()>>(
    changes: &mut Changes<K>,
    event: Result<watcher::Event<K>, watcher::Error>,
    kind: &str,
) -> Option<()> {
    match event {
        Ok(ev) => changes.relevant(&ev).then_some(()),
        Err(e) => {
            warn!(error = %e, "{kind} watch failed; retrying");
            None
        }
    }
}

/// Runs the controller until `stop` fires (in-flight reconciles finish first).
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>, stop: watch::Receiver<bool>) {
    let networks: Api<MeshNetwork> = scoped(&client, &settings.namespace);
    if let Err(e) = networks.list(&ListParams::default().limit(1)).await {
        error!(error = %e, "cannot list MeshNetworks; are the CRDs (crds/rolomesh.yaml) installed and RBAC granted?");
    }
    let (nodes, writer) = reflector::store::<Node>();
    let mut node_changes = Changes::new(triggers::node_fingerprint);
    // The cache keeps what member selection reads; Node status (images, conditions) is large and churns.
    let node_watch =
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff().modify(|n| {
            n.status = None;
            n.metadata.managed_fields = None;
            n.metadata.annotations = None;
        });
    let node_triggers = reflector::reflector(writer, node_watch)
        .filter_map(move |ev| std::future::ready(relevant(&mut node_changes, ev, "Node")));
    let mut member_changes = Changes::new(triggers::member_fingerprint);
    let member_watch =
        watcher(scoped::<MeshMember>(&client, &settings.namespace), watcher::Config::default())
            .default_backoff();
    let member_triggers = member_watch
        .filter_map(move |ev| std::future::ready(relevant(&mut member_changes, ev, "MeshMember")));
    // Members: throttled, not only debounced (see `triggers`); every network is reconciled, a cluster has few.
    let member_triggers = triggers::throttle(member_triggers, triggers::WINDOW);
    let reporter = Reporter { controller: crate::MANAGER.into(), instance: Some(settings.identity.clone()) };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        metrics,
        nodes,
        settings: settings.clone(),
        failures: Mutex::default(),
    });
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    info!(namespace = settings.namespace.as_deref().unwrap_or("*"), "starting the MeshNetwork controller");
    let controller = Controller::new(networks, watcher::Config::default());
    let known = controller.store();
    // Opaque Secrets only: ours and referenced ones are; Helm releases and tokens are not.
    let opaque = watcher::Config::default().fields("type=Opaque");
    controller
        .watches(scoped::<Secret>(&client, &settings.namespace), opaque, move |s| {
            secret_networks(&s, &known.state())
        })
        .owns(scoped::<Deployment>(&client, &settings.namespace), owned.clone())
        .owns(scoped::<Service>(&client, &settings.namespace), owned.clone())
        .owns(scoped::<DaemonSet>(&client, &settings.namespace), owned)
        .reconcile_all_on(node_triggers)
        .reconcile_all_on(member_triggers)
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
        .graceful_shutdown_on(crate::stopped(stop))
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(network = %obj, "reconciled"),
                Err(controller::Error::ReconcilerFailed(_, _)) => {} // logged by error_policy
                Err(e) => warn!(error = %e, "controller"),
            }
        })
        .await;
    info!("MeshNetwork controller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{network, owner};

    #[test]
    fn retry_backs_off_and_caps() {
        let transient = Error::NodesNotSynced;
        let delays: Vec<u64> = (1..=10).map(|n| retry_delay(&transient, n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(&transient, u32::MAX), RESYNC);
        assert_eq!(retry_delay(&transient, 0).as_secs(), 2);
        assert_eq!(retry_delay(&Error::InvalidSpec("x".into()), 1), RESYNC, "only an edit fixes it");
        assert_eq!(retry_delay(&Error::Secret("x".into()), 1), RESYNC);
        let finalizer = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::AddFinalizer(
            kube::Error::LinesCodecMaxLineLengthExceeded,
        )));
        assert_eq!((finalizer.reason(), retry_delay(&finalizer, 1).as_secs()), ("FinalizerError", 2));
    }

    #[test]
    fn secrets_map_to_the_networks_using_them() {
        let mut uses = network("a");
        uses.spec.secret_ref = Some(crds::SecretRef { name: "shared".into() });
        let mut other_ns = uses.clone();
        other_ns.metadata.namespace = Some("elsewhere".into());
        let plain = network("b");
        let all: Vec<_> = [uses, other_ns, plain].into_iter().map(Arc::new).collect();
        let mut s = Secret::default();
        s.metadata.name = Some("shared".into());
        s.metadata.namespace = Some("mesh".into());
        let hits = secret_networks(&s, &all);
        assert_eq!(
            hits.iter().map(|r| (r.name.as_str(), r.namespace.as_deref())).collect::<Vec<_>>(),
            [("a", Some("mesh"))]
        );
        let ours = crate::resources::rolodex_key_secret(&owner(), &[0; 32]);
        let hits = secret_networks(&ours, &all);
        assert_eq!(hits.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["prod"]);
        s.metadata.name = Some("unrelated".into());
        assert!(secret_networks(&s, &all).is_empty());
    }
}
