//! Workload identity on real podman pods.

use std::time::Duration;

use harness::{
    Daemon,
    pod::{Options, Pod, Podman, Spec},
};
use sidewall_proto::v1::{GetEventsRequest, get_events_response::Event};

/// Both containers of a pod: every exec names the pod, the container and its role.
#[tokio::test(flavor = "multi_thread")]
async fn events_of_both_containers_carry_pod_and_container_names() {
    let d = Daemon::start().await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let sleep = ["/bin/sleep", "3600"];
    let pod = Pod::play(
        "ident",
        &[
            Spec { name: "app", command: &sleep, ..Default::default() },
            Spec { name: "proxy", command: &sleep, ..Default::default() },
        ],
        &[("sidewall.io/sidecars", "proxy")],
    );
    let ids = [pod.container_id("app"), pod.container_id("proxy")];
    for (container, role) in [("app", "app"), ("proxy", "sidecar")] {
        // The container's own first process, and a later exec into it.
        let out = pod.exec(container, &["/bin/echo", "hello-from", container]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ev = events
            .find(&format!("exec of echo in {container}"), Duration::from_secs(30), |e| match &e.event {
                Some(Event::ProcessExec(x)) => {
                    x.process.as_ref().is_some_and(|p| p.arguments == ["hello-from", container])
                }
                _ => false,
            })
            .await;
        let Some(Event::ProcessExec(x)) = ev.event else { unreachable!() };
        let p = x.process.expect("process");
        let c = p.container.expect("container identity");
        let pd = p.pod.expect("pod identity");
        assert_eq!(c.name, container);
        assert_eq!(c.role, role);
        assert_eq!(c.runtime, "podman");
        assert!(ids.contains(&c.id), "{} is one of the pod's containers", c.id);
        assert_eq!(c.image, harness::pod::image());
        assert_eq!(pd.name, pod.name);
        assert_eq!(pd.namespace, "default");
        assert_eq!(pd.uid, pod.pod_id());
    }
    // The containers' first processes (sleep) were seen too, with the same identity.
    let sleep_seen = events.seen.iter().any(|e| match &e.event {
        Some(Event::ProcessExec(x)) => x.process.as_ref().is_some_and(|p| {
            p.binary == "/bin/sleep" && p.container.as_ref().is_some_and(|c| c.name == "app")
        }),
        _ => false,
    });
    assert!(sleep_seen, "the app container's first process is attributed from its first instruction");
}

/// podman creates its storage on first use, which can come after sidewalld started (the first
/// pod on a fresh node): that pod's containers are named all the same.
#[tokio::test(flavor = "multi_thread")]
async fn pods_are_named_when_podman_storage_appears_after_the_daemon_started() {
    let podman = Podman::private();
    let storage = podman.storage_root().expect("a private storage");
    assert!(!storage.exists(), "podman has not run with this storage yet");
    let d = Daemon::with_config(&format!("podman_storage = \"{}\"", storage.display())).await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = Pod::play_in(
        &podman,
        "cold",
        &[Spec { name: "app", command: &["/bin/sleep", "3600"], ..Default::default() }],
        &Options::default(),
    );
    let out = pod.exec("app", &["/bin/echo", "named-after-a-cold-start"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ev = events
        .find("exec of echo in the app container", Duration::from_secs(30), |e| match &e.event {
            Some(Event::ProcessExec(x)) => {
                x.process.as_ref().is_some_and(|p| p.arguments == ["named-after-a-cold-start"])
            }
            _ => false,
        })
        .await;
    let Some(Event::ProcessExec(x)) = ev.event else { unreachable!() };
    let p = x.process.expect("process");
    let c = p.container.expect("container identity");
    assert_eq!((c.name.as_str(), c.id.as_str()), ("app", pod.container_id("app").as_str()), "{c:?}");
    assert_eq!(p.pod.map(|p| p.name), Some(pod.name.clone()));
}
