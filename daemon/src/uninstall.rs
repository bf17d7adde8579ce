//! Whether this daemon stops because its DaemonSet is being uninstalled, in which case the
//! enforcement it pinned goes with it (`uninstall_daemonset`). A rolling update, a node drain
//! or a crash leaves the DaemonSet in place: enforcement stays pinned and the next daemon
//! takes it over without a gap.

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::{Api, Client};

/// What the API says of the DaemonSet at shutdown.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deleted, or being deleted: remove the pins.
    Uninstalled,
    /// Still there: keep enforcing.
    Present,
}

/// "namespace/name" of a DaemonSet; None when malformed.
pub fn parse(spec: &str) -> Option<(&str, &str)> {
    let (ns, name) = spec.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((ns, name))
}

/// Asks the API for the DaemonSet. An API that cannot be asked is an error: the caller keeps
/// enforcement, since removing it by mistake opens a gap on a node still in service.
pub async fn verdict(client: Client, namespace: &str, name: &str) -> Result<Verdict, kube::Error> {
    let api: Api<DaemonSet> = Api::namespaced(client, namespace);
    match api.get_opt(name).await? {
        None => Ok(Verdict::Uninstalled),
        Some(ds) if ds.metadata.deletion_timestamp.is_some() => Ok(Verdict::Uninstalled),
        Some(_) => Ok(Verdict::Present),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemonset_names() {
        assert_eq!(parse("sidewall/sidewall"), Some(("sidewall", "sidewall")));
        for bad in ["sidewall", "/x", "x/", "a/b/c", ""] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
