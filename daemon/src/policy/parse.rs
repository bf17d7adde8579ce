//! Reading and validating policy documents. Errors name the origin (file or "api"), the
//! field path, the line when the parser knows it, and the reason.

use serde::Deserialize;

use super::model::{ContainerRule, SidecarPolicySpec};

pub const API_VERSION: &str = "sidewall.io/v1alpha1";
pub const KIND: &str = "SidecarPolicy";
/// The cluster-scoped kind (see `model::ClusterSidecarPolicy`).
pub const CLUSTER_KIND: &str = "ClusterSidecarPolicy";
/// The namespace of a cluster-scoped policy in its key ("*/name"): no namespace is named so.
pub const CLUSTER_SCOPE: &str = "*";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{origin}: {field}: {reason}")]
pub struct PolicyError {
    pub origin: String,
    /// Path of the offending field, e.g. `spec.containers[1].loopback.bind[0]` (with the line,
    /// when known: `... (line 14, column 9)`).
    pub field: String,
    pub reason: String,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub spec: SidecarPolicySpec,
}

impl Policy {
    /// "namespace/name", the key policies are known by.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A ClusterSidecarPolicy: it may select pods of any namespace.
    pub fn is_cluster(&self) -> bool {
        self.namespace == CLUSTER_SCOPE
    }

    /// The policy as a document again (what ListPolicies shows, and what the CRD holds).
    pub fn to_document(&self) -> String {
        let (kind, metadata) = if self.is_cluster() {
            (CLUSTER_KIND, serde_json::json!({"name": self.name}))
        } else {
            (KIND, serde_json::json!({"name": self.name, "namespace": self.namespace}))
        };
        let doc = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": metadata,
            "spec": self.spec,
        });
        serde_yaml_ng::to_string(&doc).unwrap_or_default()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: SidecarPolicySpec,
    /// Written by Kubernetes; ignored.
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_yaml_ng::Value>,
}

/// Only what we need; Kubernetes adds many other fields.
#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// Parses one YAML (or JSON) document.
pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    let err =
        |field: &str, reason: String| PolicyError { origin: origin.into(), field: field.into(), reason };
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let doc: Document = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "document".to_string() } else { path };
        // The YAML error may already start with the path; say it once.
        let reason = e.into_inner().to_string();
        let reason = reason.strip_prefix(&format!("{field}: ")).map_or(reason.clone(), str::to_string);
        err(&field, reason)
    })?;
    if doc.api_version != API_VERSION {
        return Err(err("apiVersion", format!("{:?} is not {API_VERSION:?}", doc.api_version)));
    }
    if doc.kind != KIND && doc.kind != CLUSTER_KIND {
        return Err(err("kind", format!("{:?} is not {KIND:?} or {CLUSTER_KIND:?}", doc.kind)));
    }
    if !is_dns_label(&doc.metadata.name) {
        return Err(err(
            "metadata.name",
            format!("{:?} is not a valid name (lowercase letters, digits and '-')", doc.metadata.name),
        ));
    }
    if doc.kind == CLUSTER_KIND {
        if doc.metadata.namespace.is_some() {
            return Err(err("metadata.namespace", format!("a {CLUSTER_KIND} has no namespace")));
        }
        return cluster_spec(&doc.metadata.name, doc.spec, origin);
    }
    let namespace = doc.metadata.namespace.unwrap_or_else(|| "default".into());
    validate_spec(&doc.spec).map_err(|(field, reason)| err(&format!("spec.{field}"), reason))?;
    Ok(Policy { namespace, name: doc.metadata.name, spec: doc.spec })
}

/// A cluster-scoped policy, validated like a document; an empty `selector.namespaces`
/// selects every namespace.
pub fn cluster_spec(name: &str, mut spec: SidecarPolicySpec, origin: &str) -> Result<Policy, PolicyError> {
    if spec.selector.namespaces.is_empty() {
        spec.selector.namespaces = vec![CLUSTER_SCOPE.into()];
    }
    from_spec(CLUSTER_SCOPE, name, spec, origin)
}

/// A namespaced SidecarPolicy object's policy: it may select pods of its own namespace only
/// (else whoever may create one in a namespace could block or kill pods in kube-system).
pub fn namespaced_spec(
    namespace: &str,
    name: &str,
    spec: SidecarPolicySpec,
    origin: &str,
) -> Result<Policy, PolicyError> {
    if let Some((i, other)) = spec.selector.namespaces.iter().enumerate().find(|(_, n)| *n != namespace) {
        return Err(PolicyError {
            origin: origin.into(),
            field: format!("spec.selector.namespaces[{i}]"),
            reason: format!(
                "a SidecarPolicy selects pods of its own namespace {namespace:?} only, not {other:?}; a {CLUSTER_KIND} may select other namespaces"
            ),
        });
    }
    from_spec(namespace, name, spec, origin)
}

/// A policy from an already-typed spec (a Kubernetes object), validated like a document.
pub fn from_spec(
    namespace: &str,
    name: &str,
    spec: SidecarPolicySpec,
    origin: &str,
) -> Result<Policy, PolicyError> {
    validate_spec(&spec).map_err(|(field, reason)| PolicyError {
        origin: origin.into(),
        field: format!("spec.{field}"),
        reason,
    })?;
    Ok(Policy { namespace: namespace.into(), name: name.into(), spec })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with('-')
}

/// Checks serde cannot express. Returns (field path under spec, reason).
fn validate_spec(spec: &SidecarPolicySpec) -> Result<(), (String, String)> {
    if spec.containers.is_empty() {
        return Err(("containers".into(), "at least one container rule is needed".into()));
    }
    for (i, rule) in spec.containers.iter().enumerate() {
        validate_rule(rule).map_err(|(f, r)| (format!("containers[{i}]{f}"), r))?;
    }
    Ok(())
}

fn validate_rule(rule: &ContainerRule) -> Result<(), (String, String)> {
    match (&rule.name, &rule.role) {
        (Some(_), Some(_)) => return Err((String::new(), "set `name` or `role`, not both".into())),
        (None, None) => return Err((String::new(), "a rule needs a container `name` or a `role`".into())),
        (Some(n), None) if n.is_empty() => return Err((".name".into(), "must not be empty".into())),
        _ => {}
    }
    if let Some(lo) = &rule.loopback {
        for (j, c) in lo.connect.iter().flatten().enumerate() {
            no_zero_port(&c.ports)
                .map_err(|k| (format!(".loopback.connect[{j}].ports[{k}]"), "0 is not a port".into()))?;
        }
        no_zero_port(lo.bind.as_deref().unwrap_or_default())
            .map_err(|k| (format!(".loopback.bind[{k}]"), "0 is not a port".into()))?;
        for (j, u) in lo.unix.iter().flatten().enumerate() {
            if let Some(k) = u.names.iter().position(|n| !(n.starts_with('/') || n.starts_with('@'))) {
                let message =
                    format!("{:?} is neither a path (/...) nor an abstract name (@...)", u.names[k]);
                return Err((format!(".loopback.unix[{j}].names[{k}]"), message));
            }
        }
    }
    for (j, e) in rule.egress.iter().flatten().enumerate() {
        no_zero_port(&e.ports).map_err(|k| (format!(".egress[{j}].ports[{k}]"), "0 is not a port".into()))?;
    }
    Ok(())
}

fn no_zero_port(ports: &[u16]) -> Result<(), usize> {
    match ports.iter().position(|p| *p == 0) {
        Some(k) => Err(k),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Action, Mode, Permission, Role};

    const GOOD: &str = r#"
apiVersion: sidewall.io/v1alpha1
kind: SidecarPolicy
metadata:
  name: web
  namespace: shop
spec:
  mode: enforce
  selector:
    podLabels: {app: web}
  containers:
    - name: proxy
      loopback:
        connect:
          - container: app
            ports: [8080]
        bind: [15001]
      egress:
        - cidr: 10.0.0.0/8
          ports: [443]
      namespaceChanges: deny
      action: block
    - role: sidecar
      processAccess: deny
"#;

    #[test]
    fn parses_a_full_policy() {
        let p = parse(GOOD, "good.yaml").expect("valid");
        assert_eq!(p.key(), "shop/web");
        assert_eq!(p.spec.mode, Mode::Enforce);
        let proxy = &p.spec.containers[0];
        assert_eq!(proxy.action, Action::Block);
        assert_eq!(proxy.namespace_changes, Permission::Deny);
        assert_eq!(proxy.loopback.as_ref().and_then(|l| l.bind.clone()), Some(vec![15001]));
        assert_eq!(p.spec.containers[1].role, Some(Role::Sidecar));
        // The normalized document parses back to the same policy.
        assert_eq!(parse(&p.to_document(), "again").expect("round trip"), p);
    }

    #[test]
    fn type_errors_name_the_field_and_line() {
        let bad = GOOD.replace("ports: [8080]", "ports: [http]");
        let e = parse(&bad, "bad.yaml").unwrap_err();
        assert_eq!(e.origin, "bad.yaml");
        assert_eq!(e.field, "spec.containers[0].loopback.connect[0].ports[0]");
        assert!(e.reason.contains("line 16"), "{e}");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let e = parse(&GOOD.replace("namespaceChanges: deny", "namespaceChange: deny"), "x").unwrap_err();
        assert!(e.reason.contains("unknown field `namespaceChange`"), "{e}");
        let e = parse(&GOOD.replace("action: block", "action: explode"), "x").unwrap_err();
        assert_eq!(e.field, "spec.containers[0].action");
        assert!(e.reason.starts_with("unknown variant `explode`"), "the field is said once: {e}");
        let e = parse(&GOOD.replace("cidr: 10.0.0.0/8", "cidr: 10.0.0.0/33"), "x").unwrap_err();
        assert_eq!(e.field, "spec.containers[0].egress[0].cidr");
        let e = parse(&GOOD.replace("bind: [15001]", "bind: [0]"), "x").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("spec.containers[0].loopback.bind[0]", "0 is not a port")
        );
        let e = parse(&GOOD.replace("    - role: sidecar", "    - role: sidecar\n      name: x"), "x")
            .unwrap_err();
        assert_eq!(e.field, "spec.containers[1]");
        let e = parse(&GOOD.replace("kind: SidecarPolicy", "kind: NetworkPolicy"), "x").unwrap_err();
        assert_eq!(e.field, "kind");
    }
}
