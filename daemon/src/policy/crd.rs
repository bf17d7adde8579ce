//! Policy objects from the Kubernetes API: SidecarPolicy, watched in every namespace and kept
//! in the store under the source "crd", confined to pods of its own namespace; and the
//! cluster-scoped ClusterSidecarPolicy (source "cluster-crd", key "*/name"), which may select
//! any namespace. An object whose spec fails validation is logged and skipped; the previous
//! version of it stays in force. Changes are attributed to the object (namespace, name, uid,
//! resourceVersion). Failed lists and watches are retried with backoff.

use std::{collections::BTreeMap, sync::Arc};

use sidewall_proto::v1 as pb;

use kube::{
    Api, Client, ResourceExt as _,
    runtime::watcher::{self, Event},
};
use tokio_stream::StreamExt as _;

use serde::de::DeserializeOwned;

use crate::identity::kubernetes::Backoff;

use super::{
    audit,
    model::{ClusterSidecarPolicy, SidecarPolicy},
    parse::{CLUSTER_SCOPE, Policy, PolicyError, cluster_spec, namespaced_spec},
    store::PolicyStore,
};

/// The policies of the objects known, each with the object that carried it.
type Known = BTreeMap<String, (Policy, pb::PolicyActor)>;

/// The two kinds as the store sees them: each watched on its own, as a source of its own.
pub trait PolicyObject:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    /// The store's source of this kind.
    const SOURCE: &'static str;
    /// The validated policy of the object, or why it was refused.
    fn policy(&self) -> Result<Policy, PolicyError>;
    /// The key its policy has in the store (also for a deleted object that was refused).
    fn key(&self) -> String;
}

impl PolicyObject for SidecarPolicy {
    const SOURCE: &'static str = "crd";

    fn policy(&self) -> Result<Policy, PolicyError> {
        let ns = namespace_of(self);
        let origin = format!("sidecarpolicies/{ns}/{}", self.name_any());
        namespaced_spec(&ns, &self.name_any(), self.spec.clone(), &origin)
    }

    fn key(&self) -> String {
        format!("{}/{}", namespace_of(self), self.name_any())
    }
}

impl PolicyObject for ClusterSidecarPolicy {
    const SOURCE: &'static str = "cluster-crd";

    fn policy(&self) -> Result<Policy, PolicyError> {
        let origin = format!("clustersidecarpolicies/{}", self.name_any());
        cluster_spec(&self.name_any(), self.spec.0.clone(), &origin)
    }

    fn key(&self) -> String {
        format!("{CLUSTER_SCOPE}/{}", self.name_any())
    }
}

fn namespace_of(obj: &impl kube::Resource) -> String {
    obj.meta().namespace.clone().unwrap_or_else(|| "default".into())
}

/// The validated policy of a SidecarPolicy object, or why it was refused.
pub fn policy_of(obj: &SidecarPolicy) -> Result<Policy, PolicyError> {
    obj.policy()
}

/// Watches both kinds (SidecarPolicy in every namespace, ClusterSidecarPolicy).
pub async fn watch(client: Client, store: Arc<PolicyStore>) {
    tokio::join!(
        watch_kind::<SidecarPolicy>(Api::all(client.clone()), store.clone()),
        watch_kind::<ClusterSidecarPolicy>(Api::all(client), store),
    );
}

async fn watch_kind<K: PolicyObject>(api: Api<K>, store: Arc<PolicyStore>) {
    let mut known = Known::new();
    let mut relist: Option<Known> = None;
    let mut stream = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
    let kind = K::kind(&());
    let mut backoff = Backoff::default();
    while let Some(ev) = stream.next().await {
        if matches!(ev, Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_))) {
            backoff = Backoff::default();
        }
        // Objects this event removed, with who removed them.
        let mut gone: BTreeMap<String, pb::PolicyActor> = BTreeMap::new();
        match ev {
            Ok(Event::Apply(obj)) => upsert(&mut known, &obj),
            Ok(Event::Delete(obj)) => {
                known.remove(&obj.key());
                gone.insert(obj.key(), actor_of(&obj));
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
                let delay = backoff.next_delay();
                let hint = hint(&kind, &K::plural(&()), &e);
                tracing::warn!(error = %e, ?delay, "{kind} watch failed{hint}; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        apply(&store, K::SOURCE, &known, &gone);
    }
}

/// What an operator should look at for the usual failures: the CRD not installed, or RBAC.
fn hint(kind: &str, plural: &str, e: &watcher::Error) -> String {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => s.code,
        _ => 0,
    };
    match code {
        404 => format!(" (the {kind} CRD is not installed: kubectl apply -f deploy/crds/)"),
        401 | 403 => {
            format!(" (access refused: the daemon's service account needs list and watch on {plural})")
        }
        _ => String::new(),
    }
}

/// Puts the known policies in force; the store describes only what changed.
fn apply(store: &PolicyStore, source: &str, known: &Known, gone: &BTreeMap<String, pb::PolicyActor>) {
    let actor = |key: &str| {
        known.get(key).map(|(_, a)| a.clone()).or_else(|| gone.get(key).cloned()).unwrap_or_default()
    };
    store.replace_source(source, known.values().map(|(p, _)| p.clone()).collect(), &actor);
}

/// The object as the actor of a change (a cluster-scoped one has no namespace).
fn actor_of<K: PolicyObject>(obj: &K) -> pb::PolicyActor {
    let meta = obj.meta();
    audit::kubernetes(
        meta.namespace.as_deref().unwrap_or_default(),
        &obj.name_any(),
        meta.uid.as_deref().unwrap_or_default(),
        meta.resource_version.as_deref().unwrap_or_default(),
    )
}

fn upsert<K: PolicyObject>(into: &mut Known, obj: &K) {
    match obj.policy() {
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
    fn cluster_crd_is_generated_from_the_types_and_committed() {
        let crd = serde_yaml_ng::to_string(&ClusterSidecarPolicy::crd()).expect("yaml");
        let committed = include_str!("../../../deploy/crds/clustersidecarpolicies.sidewall.io.yaml");
        assert_eq!(
            committed, crd,
            "deploy/crds is stale: regenerate it with `sidewalld --print-cluster-crd > deploy/crds/clustersidecarpolicies.sidewall.io.yaml`"
        );
        assert!(crd.contains("scope: Cluster"), "{crd}");
    }

    fn object<K: serde::de::DeserializeOwned>(doc: &str) -> K {
        serde_yaml_ng::from_str(doc).expect("object")
    }

    const RULES: &str = "  containers:\n    - role: sidecar\n      processAccess: deny\n";

    #[test]
    fn a_namespaced_policy_selects_its_own_namespace_only() {
        let doc = |namespaces: &str| {
            format!(
                "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: p\n  namespace: shop\nspec:\n  selector:\n    namespaces: {namespaces}\n{RULES}"
            )
        };
        for refused in ["[\"*\"]", "[\"kube-system\"]", "[\"shop\", \"kube-system\"]"] {
            let err = policy_of(&object(&doc(refused))).unwrap_err();
            assert_eq!(err.origin, "sidecarpolicies/shop/p", "{refused}");
            assert!(err.field.starts_with("spec.selector.namespaces["), "{refused}: {err}");
            assert!(err.reason.contains("ClusterSidecarPolicy"), "{err}");
        }
        for allowed in ["[]", "[\"shop\"]"] {
            let p = policy_of(&object(&doc(allowed))).expect(allowed);
            assert_eq!(p.key(), "shop/p");
        }
    }

    #[test]
    fn a_cluster_policy_may_select_every_namespace() {
        let doc = |selector: &str| {
            format!(
                "apiVersion: sidewall.io/v1alpha1\nkind: ClusterSidecarPolicy\nmetadata:\n  name: guard\nspec:\n{selector}{RULES}"
            )
        };
        let everywhere: ClusterSidecarPolicy = object(&doc(""));
        let p = everywhere.policy().expect("valid");
        assert_eq!((p.key(), p.spec.selector.namespaces.clone()), ("*/guard".into(), vec!["*".to_string()]));
        assert!(p.to_document().contains("kind: ClusterSidecarPolicy"), "{}", p.to_document());
        let some: ClusterSidecarPolicy = object(&doc("  selector:\n    namespaces: [kube-system]\n"));
        assert_eq!(some.policy().expect("valid").spec.selector.namespaces, ["kube-system"]);
        let bad: ClusterSidecarPolicy = object(&doc("").replace("- role: sidecar\n      ", "- "));
        let err = bad.policy().unwrap_err();
        assert_eq!(
            (err.origin.as_str(), err.field.as_str()),
            ("clustersidecarpolicies/guard", "spec.containers[0]")
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
