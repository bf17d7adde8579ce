//! What a container is for: "app", "sidecar", "init", "host", or "infra" (a pod's pause
//! container). Shared by the Kubernetes and podman sources.

/// Pod annotation naming the sidecars of a pod: `sidewall.io/sidecars: proxy,logs`.
pub const SIDECARS_ANNOTATION: &str = "sidewall.io/sidecars";

/// Last path components of well-known sidecar image repositories.
const SIDECAR_IMAGES: &[&str] = &[
    "proxyv2", // Istio's Envoy
    "istio-proxy",
    "linkerd-proxy",
    "linkerd2-proxy",
    "envoy",
    "envoyproxy",
    "envoy-distroless",
    "aws-appmesh-envoy",
    "kuma-dp",
    "consul-dataplane",
    "vault", // Vault Agent injector runs hashicorp/vault
    "cloud-sql-proxy",
    "cloudsql-proxy",
    "gce-proxy", // the old Cloud SQL proxy
    "fluent-bit",
    "fluentd",
    "opentelemetry-collector",
    "opentelemetry-collector-contrib",
    "opentelemetry-collector-k8s",
    "otel-collector",
    "otelcol",
    "otelcol-contrib",
    "jaeger-agent",
    "aws-xray-daemon",
    "oauth2-proxy",
    "daprd",
];

/// Repository suffixes whose last component alone is too generic ("proxy", "agent").
const SIDECAR_REPO_SUFFIXES: &[&str] =
    &["linkerd/proxy", "datadoghq/agent", "datadog/agent", "datadoghq/dogstatsd", "datadog/dogstatsd"];

/// True for images of well-known sidecars, whatever the registry, tag or digest.
pub fn is_sidecar_image(image: &str) -> bool {
    let repo = image_repository(image);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    SIDECAR_IMAGES.contains(&last)
        || SIDECAR_REPO_SUFFIXES
            .iter()
            .any(|s| repo.strip_suffix(s).is_some_and(|rest| rest.is_empty() || rest.ends_with('/')))
}

/// `registry:5000/org/name:tag@sha256:...` -> `registry:5000/org/name`.
fn image_repository(image: &str) -> &str {
    let named = image.split_once('@').map_or(image, |(name, _digest)| name);
    // A ':' followed by a '/' separates a registry port, not a tag.
    match named.rfind(':') {
        Some(i) if !named[i..].contains('/') => &named[..i],
        _ => named,
    }
}

/// Whether `container` is listed in a `sidewall.io/sidecars` annotation value.
pub fn named_as_sidecar(annotation: Option<&str>, container: &str) -> bool {
    annotation.is_some_and(|v| v.split(',').any(|n| n.trim() == container))
}

/// Role of a regular (not init) container from what the runtime or the API says.
pub fn app_or_sidecar(annotation: Option<&str>, container: &str, image: &str) -> &'static str {
    if named_as_sidecar(annotation, container) || is_sidecar_image(image) { "sidecar" } else { "app" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_images_whatever_the_registry_tag_or_digest() {
        assert!(is_sidecar_image("docker.io/istio/proxyv2:1.22.0"));
        assert!(is_sidecar_image("registry:5000/team/envoy@sha256:abc"));
        assert!(is_sidecar_image("ghcr.io/x/fluent-bit:3.0@sha256:ff"));
        assert!(is_sidecar_image("gcr.io/datadoghq/agent:7"));
        assert!(!is_sidecar_image("busybox"));
        assert!(!is_sidecar_image("registry:5000/envoy-app:1"));
    }

    #[test]
    fn roles() {
        assert_eq!(app_or_sidecar(Some("proxy, logs"), "logs", "busybox"), "sidecar");
        assert_eq!(app_or_sidecar(Some("proxy"), "app", "busybox"), "app");
        assert_eq!(
            app_or_sidecar(None, "x", "example.com/proxy:edge"),
            "app",
            "a generic name alone is not a sidecar"
        );
        assert_eq!(app_or_sidecar(None, "x", "cr.l5d.io/linkerd/linkerd2-proxy:edge"), "sidecar");
        assert_eq!(app_or_sidecar(None, "istio-proxy", "docker.io/istio/proxyv2:1.22"), "sidecar");
    }

    #[test]
    fn image_repositories() {
        assert_eq!(image_repository("nginx"), "nginx");
        assert_eq!(image_repository("nginx:1.27"), "nginx");
        assert_eq!(image_repository("reg:5000/a/b"), "reg:5000/a/b");
        assert_eq!(image_repository("reg:5000/a/b:t@sha256:ff"), "reg:5000/a/b");
        assert_eq!(image_repository("a/b@sha256:ff"), "a/b");
    }
}
