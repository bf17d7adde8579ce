//! SidecarPolicy objects from the Kubernetes API: watched in every namespace and kept in the
//! store under the source "crd". An object whose spec fails validation is logged and skipped;
//! the previous version of it stays in force. Changes are attributed to the object
//! (namespace, name, uid, resourceVersion).

use std::{collections::BTreeMap, sync::Arc};

use sidewall_proto::v1 as pb;

use kube::{
    Api, Client, ResourceExt as _,
    runtime::watcher::{self, Event},
};
use tokio_stream::StreamExt as _;

use super::{
    audit,
    model::SidecarPolicy,
    parse::{Policy, from_spec},
    store::PolicyStore,
};

/// The policies of the objects known, each with the object that carried it.
type Known = BTreeMap<String, (Policy, pb::PolicyActor)>;

const SOURCE: &str = "crd";

/// The validated policy of an object, or why it was refused.
pub fn policy_of(obj: &SidecarPolicy) -> Result<Policy, super::parse::PolicyError> {
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let origin = format!("sidecarpolicies/{ns}/{}", obj.name_any());
    from_spec(&ns, &obj.name_any(), obj.spec.clone(), &origin)
}

pub async fn watch(client: Client, store: Arc<PolicyStore>) {
    let api: Api<SidecarPolicy> = Api::all(client);
    let mut known = Known::new();
    let mut relist: Option<Known> = None;
    let mut stream = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
    while let Some(ev) = stream.next().await {
        // Objects this event removed, with who removed them.
        let mut gone: BTreeMap<String, pb::PolicyActor> = BTreeMap::new();
        match ev {
            Ok(Event::Apply(obj)) => upsert(&mut known, &obj),
            Ok(Event::Delete(obj)) => {
                let key =
                    format!("{}/{}", obj.namespace().unwrap_or_else(|| "default".into()), obj.name_any());
                known.remove(&key);
                gone.insert(key, actor_of(&obj));
            }
            Ok(Event::Init) => relist = Some(Known::new()),
            Ok(Event::InitApply(obj)) => {
                if let Some(r) = relist.as_mut() {
                    upsert(r, &obj);
                }
            }
            Ok(Event::InitDone) => {
                if let Some(r) = relist.take() {
                    // Objects deleted while unwatched: known by the last version seen.
                    gone = std::mem::replace(&mut known, r).into_iter().map(|(k, (_, a))| (k, a)).collect();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "SidecarPolicy watch failed; retrying");
                continue;
            }
        }
        apply(&store, &known, &gone);
    }
}

/// Puts the known policies in force; the store describes only what changed.
fn apply(store: &PolicyStore, known: &Known, gone: &BTreeMap<String, pb::PolicyActor>) {
    let actor = |key: &str| {
        known.get(key).map(|(_, a)| a.clone()).or_else(|| gone.get(key).cloned()).unwrap_or_default()
    };
    store.replace_source(SOURCE, known.values().map(|(p, _)| p.clone()).collect(), &actor);
}

/// The object as the actor of a change.
fn actor_of(obj: &SidecarPolicy) -> pb::PolicyActor {
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let meta = &obj.metadata;
    audit::kubernetes(
        &ns,
        &obj.name_any(),
        meta.uid.as_deref().unwrap_or_default(),
        meta.resource_version.as_deref().unwrap_or_default(),
    )
}

fn upsert(into: &mut Known, obj: &SidecarPolicy) {
    match policy_of(obj) {
        Ok(p) => {
            into.insert(p.key(), (p, actor_of(obj)));
        }
        Err(e) => tracing::error!("policy refused, the previous version stays in force: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt as _;

    #[test]
    fn crd_is_generated_from_the_types_and_committed() {
        let crd = serde_yaml_ng::to_string(&SidecarPolicy::crd()).expect("yaml");
        let committed = include_str!("../../../deploy/crds/sidecarpolicies.sidewall.io.yaml");
        assert_eq!(
            committed, crd,
            "deploy/crds is stale: regenerate it with `sidewalld --print-crd > deploy/crds/sidecarpolicies.sidewall.io.yaml`"
        );
    }

    #[test]
    fn objects_are_validated_like_files() {
        let doc = "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: p\n  namespace: shop\nspec:\n  containers:\n    - name: proxy\n      role: sidecar\n";
        let obj: SidecarPolicy = serde_yaml_ng::from_str(doc).expect("object");
        let err = policy_of(&obj).unwrap_err();
        assert_eq!(err.origin, "sidecarpolicies/shop/p");
        assert_eq!(err.field, "spec.containers[0]");
    }
}
