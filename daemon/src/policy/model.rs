//! The `SidecarPolicy` resource (group `sidewall.io`): which loopback ports each container of
//! a pod may reach and own, where it may connect outside the pod, whether it may change
//! namespaces, touch other containers' processes or reach the container runtime, and what a
//! violation gets. The same document is a Kubernetes CRD object and a file in `--policy-dir`.

use std::collections::BTreeMap;

use ipnet::IpNet;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sidewall.io",
    version = "v1alpha1",
    kind = "SidecarPolicy",
    namespaced,
    shortname = "swp",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPolicySpec {
    /// `monitor` (report what enforce would do) or `enforce`.
    #[serde(default)]
    pub mode: Mode,
    /// The pods this policy governs. Empty: every pod in the policy's namespace.
    #[serde(default)]
    pub selector: PodSelector,
    /// Rules per container; the first rule matching a container applies to it.
    pub containers: Vec<ContainerRule>,
}

/// The cluster-scoped kind: the same spec, but it may select pods of any namespace (an empty
/// `selector.namespaces` selects every namespace). A namespaced `SidecarPolicy` selects pods of
/// its own namespace only, so whoever may create one in a namespace cannot reach others.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sidewall.io",
    version = "v1alpha1",
    kind = "ClusterSidecarPolicy",
    shortname = "cswp",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#
)]
#[serde(transparent)]
pub struct ClusterSidecarPolicySpec(pub SidecarPolicySpec);

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Monitor,
    Enforce,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSelector {
    /// Namespaces of the pods; empty: the policy's own namespace (`["*"]`: every namespace).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Labels every selected pod carries.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerRule {
    /// Container name (`name`), or every container of a role (`role`); one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Loopback (intra-pod) access. Absent: unrestricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loopback: Option<LoopbackRules>,
    /// Destinations outside the pod. Absent: unrestricted; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    /// setns, unshare, clone into new namespaces, namespace drift.
    #[serde(default)]
    pub namespace_changes: Permission,
    /// ptrace, process_vm_*, /proc/<pid>/{mem,environ,...} of processes in other containers.
    #[serde(default)]
    pub process_access: Permission,
    /// The container runtime's sockets and the kubelet API.
    #[serde(default)]
    pub runtime_sockets: Permission,
    /// Writes to sysctls that route traffic into the loopback (`route_localnet`, `accept_local`).
    #[serde(default)]
    pub loopback_routing: Permission,
    /// What a violation gets: `alert`; `block` (connects, sends and binds fail with EPERM); or
    /// `kill` (namespace changes and process access kill the process; connects, sends and
    /// binds are blocked as with `block`).
    #[serde(default)]
    pub action: Action,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    App,
    Sidecar,
    Init,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Sidecar => "sidecar",
            Role::Init => "init",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    #[default]
    Allow,
    Deny,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Alert,
    Block,
    Kill,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoopbackRules {
    /// Sibling ports this container may connect to (TCP) or send to (UDP). Absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Vec<PortRule>>,
    /// Ports this container may bind. Absent: any port not declared by another container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<Vec<u16>>,
    /// Sibling unix sockets this container may connect to (abstract names, which the pod's
    /// containers share with its network namespace, and paths in shared volumes). Absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<Vec<UnixRule>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnixRule {
    /// The sibling that listens; absent: whichever container listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Socket addresses as the listener bound them: "/path", "@abstract", or a prefix ending in
    /// "*". Empty: any of that sibling's sockets.
    #[serde(default)]
    pub names: Vec<String>,
}

impl UnixRule {
    /// Whether this rule allows reaching `name` on `peer` (the listening container's name).
    pub fn allows(&self, peer: &str, name: &str) -> bool {
        self.container.as_deref().is_none_or(|c| c == peer)
            && (self.names.is_empty()
                || self.names.iter().any(|n| match n.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => n == name,
                }))
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    /// The sibling that owns the ports; absent: whichever container owns them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub ports: Vec<u16>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// An address range, e.g. `10.0.0.0/8` or `2001:db8::/32`.
    #[schemars(with = "String")]
    pub cidr: IpNet,
    /// Ports; empty: any.
    #[serde(default)]
    pub ports: Vec<u16>,
}
