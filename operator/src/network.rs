//! The work for one MeshNetwork: [`reconcile`] (secrets, rolodex, agents, members, status) and [`cleanup`]
//! (the finalizer's explicit deletion of everything owned, since a cluster may lack a garbage collector).

use std::fmt::Debug;
use std::io::Read;

use crds::MeshNetwork;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use rolodex::keys::{self, KeyUse};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::controller::{Context, RESYNC};
use crate::resources::{self, LABEL_MANAGED_BY, LABEL_NETWORK, MANAGED_BY, Owner};
use crate::status::{self, Observed, Rolodex};
use crate::{Error, MANAGER, Result, members};

/// Brings the network's objects, members and status in line with its spec.
pub async fn reconcile(mn: &MeshNetwork, ctx: &Context) -> Result<Action> {
    let owner = Owner::of(mn)?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = mn.metadata.generation;
    let (status, result) = match apply(mn, &owner, ctx).await {
        Ok(observed) => {
            let s = status::healthy(mn.status.as_ref(), generation, mn.network_name(), &observed, &now);
            (s, Ok(Action::requeue(RESYNC)))
        }
        Err(e) => {
            let s = status::failed(
                mn.status.as_ref(),
                generation,
                mn.network_name(),
                e.reason(),
                e.to_string(),
                &now,
            );
            (s, Err(e))
        }
    };
    if mn.status.as_ref() != Some(&status) {
        let api: Api<MeshNetwork> = Api::namespaced(ctx.client.clone(), &owner.namespace);
        let patch = serde_json::json!({
            "apiVersion": MeshNetwork::api_version(&()),
            "kind": MeshNetwork::kind(&()),
            "status": status,
        });
        let written =
            api.patch_status(&owner.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await;
        match (written, &result) {
            (Err(e), Ok(_)) => return Err(e.into()),
            (Err(e), Err(_)) => warn!(error = %e, "cannot write the failure into the status"),
            (Ok(_), _) => {}
        }
    }
    result
}

/// Writes everything the spec asks for and reports what it saw.
async fn apply(mn: &MeshNetwork, owner: &Owner, ctx: &Context) -> Result<Observed> {
    validate(mn, owner)?;
    let spec = &mn.spec;
    let network_name = mn.network_name();
    let regarding = mn.object_ref(&());
    let agent_image = image(spec.images.agent.as_ref(), ctx, "agent")?;
    let rolodex_image = match spec.rolodex.managed {
        Some(_) => Some(image(spec.images.rolodex.as_ref(), ctx, "rolodex")?),
        None => None,
    };

    let secret = network_secret(mn, owner, ctx, &regarding).await?;
    let key = keys::derive(&secret.bytes, &network_name, KeyUse::Rolodex);
    apply_owned(ctx, &regarding, resources::rolodex_key_secret(owner, &key)).await?;

    let (rolodex, endpoint) = match (&spec.rolodex.managed, &spec.rolodex.external, rolodex_image) {
        (Some(managed), _, Some(image)) => {
            let d = resources::rolodex_deployment(owner, &network_name, &image, managed);
            let d = apply_owned(ctx, &regarding, d).await?;
            let svc = apply_owned(ctx, &regarding, resources::rolodex_service(owner, managed)).await?;
            let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0) > 0;
            (Rolodex::Managed { available }, status::service_endpoint(&svc, managed.port))
        }
        (_, Some(external), _) => {
            // Switched from managed to external: the rolodex goes.
            delete_owned::<Deployment>(ctx, owner, &resources::rolodex_name(&owner.name)).await?;
            delete_owned::<Service>(ctx, owner, &resources::rolodex_name(&owner.name)).await?;
            (Rolodex::External, external.endpoints.first().cloned())
        }
        _ => {
            return Err(Error::InvalidSpec("set exactly one of rolodex.managed and rolodex.external".into()));
        }
    };

    let sa = &ctx.settings.agent_service_account;
    let ds = resources::agent_daemonset(owner, &agent_image, sa, &secret.name, &spec.agent);
    apply_owned(ctx, &regarding, ds).await?;

    let synced = members::sync(ctx, owner, &regarding, &spec.overlay, &spec.agent).await?;
    Ok(Observed {
        counts: status::count(&synced.members),
        rolodex,
        endpoint,
        member_failures: synced.failures.into_iter().map(|f| f.message).collect(),
    })
}

/// Spec checks the CRD schema cannot make: names that must also be label values and Service names, and
/// the overlay's address pools.
pub fn validate(mn: &MeshNetwork, owner: &Owner) -> Result<()> {
    let invalid = |why: String| Err(Error::InvalidSpec(format!("{}/{}: {why}", owner.namespace, owner.name)));
    if !resources::is_label_value(&owner.name) {
        return invalid(format!("the name must be at most 63 characters to fit the {LABEL_NETWORK} label"));
    }
    let svc = resources::rolodex_name(&owner.name);
    if mn.spec.rolodex.managed.is_some() && !resources::is_dns1035_label(&svc) {
        return invalid(format!(
            "with a managed rolodex the name must start with a letter, hold no '.', and be at most 55 \
             characters: the Service {svc:?} must be a DNS label"
        ));
    }
    match members::pools(&mn.spec.overlay) {
        Ok(p) if p.is_empty() => invalid("overlay.allocateFrom covers no family of overlay.cidrs".into()),
        Ok(_) => Ok(()),
        Err(e) => invalid(format!("overlay: {e}")),
    }
}

fn image(over: Option<&String>, ctx: &Context, which: &'static str) -> Result<String> {
    over.or(ctx.settings.image.as_ref()).filter(|s| !s.is_empty()).cloned().ok_or(Error::NoImage(which))
}

/// The network secret: its Secret's name and the exact bytes the agent derives keys from.
struct NetworkSecret {
    name: String,
    bytes: Vec<u8>,
}

/// Fills `buf` from the OS random number generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).map_err(Error::Random)
}

/// The secret as the agent reads its file: trailing ASCII whitespace trimmed, at least 16 bytes.
pub fn secret_bytes(secret: &Secret, what: &str) -> Result<Vec<u8>> {
    let data = secret.data.as_ref().and_then(|d| d.get(resources::SECRET_KEY));
    let Some(data) = data else {
        return Err(Error::Secret(format!("{what} has no key {:?}", resources::SECRET_KEY)));
    };
    let mut bytes = data.0.clone();
    let len = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    bytes.truncate(len);
    if bytes.len() < keys::MIN_SECRET_LEN {
        return Err(Error::Secret(format!(
            "{what} holds {} bytes (after trimming trailing whitespace); at least {} are needed",
            bytes.len(),
            keys::MIN_SECRET_LEN
        )));
    }
    Ok(bytes)
}

/// Reads `spec.secretRef`, or the generated `<mn>-secret`, creating it (32 random bytes as 64 hex
/// characters) when missing. An existing Secret is never rewritten.
async fn network_secret(
    mn: &MeshNetwork,
    owner: &Owner,
    ctx: &Context,
    regarding: &ObjectReference,
) -> Result<NetworkSecret> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let name = match &mn.spec.secret_ref {
        Some(r) => r.name.clone(),
        None => resources::network_secret_name(&owner.name),
    };
    let what = format!("Secret {}/{name}", owner.namespace);
    if let Some(s) = api.get_opt(&name).await? {
        return Ok(NetworkSecret { bytes: secret_bytes(&s, &what)?, name });
    }
    if mn.spec.secret_ref.is_some() {
        return Err(Error::Secret(format!("{what} (spec.secretRef) does not exist")));
    }
    let mut raw = [0u8; 32];
    random_bytes(&mut raw)?;
    let hex = keys::to_hex(&raw);
    let secret = resources::network_secret(owner, &hex);
    let written = api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&secret)).await?;
    info!(secret = %name, "generated the network secret");
    let note = format!("generated network secret {name}");
    ctx.event(regarding, Some(written.object_ref(&())), EventType::Normal, "Created", "Create", note).await;
    Ok(NetworkSecret { name, bytes: hex.into_bytes() })
}

/// Server-side applies `obj`; an Event says when it did not exist before.
async fn apply_owned<K>(ctx: &Context, regarding: &ObjectReference, obj: K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let (Some(name), Some(ns)) = (obj.meta().name.clone(), obj.meta().namespace.clone()) else {
        return Err(Error::InvalidSpec("built an object without name or namespace".into()));
    };
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let existed = api.get_metadata_opt(&name).await?.is_some();
    let written = api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&obj)).await?;
    if !existed {
        let kind = K::kind(&());
        info!(%kind, %name, "created");
        let note = format!("created {kind} {name}");
        ctx.event(regarding, Some(written.object_ref(&())), EventType::Normal, "Created", "Create", note)
            .await;
    }
    Ok(written)
}

/// Whether the operator wrote this object for `owner` (owner reference, or its labels).
pub fn owned_by(meta: &ObjectMeta, owner: &Owner) -> bool {
    let by_ref = meta.owner_references.iter().flatten().any(|r| r.uid == owner.reference.uid);
    let labels = meta.labels.as_ref();
    let by_labels = labels.and_then(|l| l.get(LABEL_MANAGED_BY)).is_some_and(|v| v == MANAGED_BY)
        && labels.and_then(|l| l.get(LABEL_NETWORK)) == Some(&owner.name);
    by_ref || by_labels
}

/// Deletes `name` if it exists and the operator wrote it for `owner`. Returns whether it deleted.
async fn delete_owned<K>(ctx: &Context, owner: &Owner, name: &str) -> Result<bool>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let Some(found) = api.get_metadata_opt(name).await? else { return Ok(false) };
    if !owned_by(&found.metadata, owner) {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            info!(kind = %K::kind(&()), %name, "deleted");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Finalizer cleanup: deletes the members the operator created and every owned object, then lets the
/// finalizer go. A Secret named by `spec.secretRef` is the user's and stays.
pub async fn cleanup(mn: &MeshNetwork, ctx: &Context) -> Result<Action> {
    let owner = Owner::of(mn)?;
    let n = owner.name.as_str();
    let members = members::delete_all(ctx, &owner).await?;
    let mut deleted = Vec::new();
    if delete_owned::<DaemonSet>(ctx, &owner, &resources::agent_name(n)).await? {
        deleted.push("DaemonSet");
    }
    if delete_owned::<Service>(ctx, &owner, &resources::rolodex_name(n)).await? {
        deleted.push("Service");
    }
    if delete_owned::<Deployment>(ctx, &owner, &resources::rolodex_name(n)).await? {
        deleted.push("Deployment");
    }
    let mut secrets = vec![resources::rolodex_key_name(n)];
    if mn.spec.secret_ref.is_none() {
        secrets.push(resources::network_secret_name(n));
    }
    for s in &secrets {
        if delete_owned::<Secret>(ctx, &owner, s).await? {
            deleted.push("Secret");
        }
    }
    info!(members, objects = ?deleted, "cleaned up");
    let note = format!("deleted {members} MeshMembers and {} owned objects", deleted.len());
    ctx.event(&mn.object_ref(&()), None, EventType::Normal, "Deleted", "Delete", note).await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{network, overlay, owner};
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(data: &[u8]) -> Secret {
        Secret {
            data: Some(BTreeMap::from([("secret".to_string(), ByteString(data.to_vec()))])),
            ..Default::default()
        }
    }

    #[test]
    fn secret_bytes_match_what_the_agent_reads() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(secret_bytes(&secret(format!("{hex}\n").as_bytes()), "s").unwrap(), hex.as_bytes());
        assert_eq!(
            secret_bytes(&secret(format!(" {hex} \r\n\t").as_bytes()), "s").unwrap(),
            format!(" {hex}").as_bytes()
        );
        let short = secret_bytes(&secret(b"short\n"), "Secret a/b").unwrap_err().to_string();
        assert!(short.contains("Secret a/b holds 5 bytes"), "{short}");
        let missing = secret_bytes(&Secret::default(), "Secret a/b").unwrap_err().to_string();
        assert!(missing.contains("has no key \"secret\""), "{missing}");
    }

    #[test]
    fn rolodex_key_derives_from_the_hex_text() {
        // The agent derives from the file's bytes: the 64 hex characters, not the 32 raw bytes.
        let raw = [9u8; 32];
        let hex = keys::to_hex(&raw);
        let from_secret = secret_bytes(&secret(hex.as_bytes()), "s").unwrap();
        assert_eq!(
            keys::derive(&from_secret, "prod", KeyUse::Rolodex),
            keys::derive(hex.as_bytes(), "prod", KeyUse::Rolodex)
        );
        assert_ne!(
            keys::derive(&from_secret, "prod", KeyUse::Rolodex),
            keys::derive(&raw, "prod", KeyUse::Rolodex)
        );
    }

    #[test]
    fn random_bytes_are_random() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        random_bytes(&mut a).unwrap();
        random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn validation() {
        let o = owner();
        assert!(validate(&network("prod"), &o).is_ok());
        let long = network(&"a".repeat(64));
        let err = validate(&long, &Owner::of(&long).unwrap()).unwrap_err().to_string();
        assert!(err.contains("at most 63"), "{err}");
        let dotted = network("prod.eu");
        let err = validate(&dotted, &Owner::of(&dotted).unwrap()).unwrap_err().to_string();
        assert!(err.contains("must be a DNS label"), "{err}");
        let mut external = network("prod.eu");
        external.spec.rolodex.managed = None;
        external.spec.rolodex.external = Some(crds::ExternalRolodex { endpoints: vec!["r:1".into()] });
        assert!(validate(&external, &Owner::of(&external).unwrap()).is_ok(), "no Service then");
        let mut bad = network("prod");
        bad.spec.overlay = overlay(&["100.64.0.0/10"], &["10.0.0.0/8"]);
        assert!(
            matches!(validate(&bad, &o), Err(Error::InvalidSpec(m)) if m.contains("outside the overlay"))
        );
        bad.spec.overlay = overlay(&["100.64.0.0/10", "fd00::/64"], &["fd00::/80"]);
        assert!(validate(&bad, &o).is_ok());
    }

    #[test]
    fn ownership_by_reference_or_labels() {
        let o = owner();
        let mut meta = ObjectMeta { owner_references: Some(vec![o.reference.clone()]), ..Default::default() };
        assert!(owned_by(&meta, &o));
        meta.owner_references = None;
        assert!(!owned_by(&meta, &o));
        meta.labels = Some(o.labels());
        assert!(owned_by(&meta, &o), "labels survive a re-created MeshNetwork with a new uid");
        meta.labels = Some(BTreeMap::from([(LABEL_NETWORK.to_string(), "prod".to_string())]));
        assert!(!owned_by(&meta, &o), "someone else's");
    }
}
