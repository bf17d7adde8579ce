//! Socket sensors and the loopback flow graph on real podman pods (`--network none`: the
//! containers share one network namespace with loopback only, like a pod's containers).

use std::{process::Command, time::Duration};

use harness::{
    Daemon, EventStream, bin,
    pod::{Pod, Spec},
};
use sidewall_proto::v1::{
    GetEventsRequest, GetEventsResponse, GetFlowsRequest, Process, Socket, get_events_response::Event,
};

const WAIT: Duration = Duration::from_secs(30);

fn container_name(p: Option<&Process>) -> &str {
    p.and_then(|p| p.container.as_ref()).map_or("", |c| c.name.as_str())
}

/// Whether `p` runs in `container` of `pod`: every daemon sees the whole node, and tests
/// running side by side use the same container names.
fn is(p: Option<&Process>, pod: &Pod, container: &str) -> bool {
    p.and_then(|p| p.pod.as_ref()).is_some_and(|x| x.name == pod.name) && container_name(p) == container
}

fn remote_port(s: Option<&Socket>) -> u32 {
    s.and_then(|s| s.remote.as_ref()).map_or(0, |r| r.port)
}

/// The app serves on loopback, the sidecar is a plain sleeper we exec tools in.
fn app_and_sidecar(app: &[&str]) -> Pod {
    Pod::play(
        "sock",
        &[
            Spec { name: "app", command: app, ..Default::default() },
            Spec { name: "proxy", command: &["/bin/sleep", "3600"], ..Default::default() },
        ],
        &[("sidewall.io/sidecars", "proxy")],
    )
}

/// Direction and payload bytes (sent, received) of the sidecar's close of a connection to `port`.
async fn sidecar_close(events: &mut EventStream, pod: &Pod, port: u32) -> (String, u64, u64) {
    let close = events
        .find(&format!("the sidecar's close of a connection to {port}"), WAIT, |e| match &e.event {
            Some(Event::ProcessClose(x)) => {
                is(x.process.as_ref(), pod, "proxy") && remote_port(x.socket.as_ref()) == port
            }
            _ => false,
        })
        .await;
    let Some(Event::ProcessClose(x)) = close.event else { unreachable!() };
    (x.direction, x.bytes_sent, x.bytes_received)
}

async fn bound(events: &mut EventStream, pod: &Pod, port: u32) -> GetEventsResponse {
    events
        .find(&format!("bind of port {port} by the app"), WAIT, |e| match &e.event {
            Some(Event::ProcessBind(b)) => {
                is(b.process.as_ref(), pod, "app")
                    && b.socket.as_ref().and_then(|s| s.local.as_ref()).is_some_and(|l| l.port == port)
            }
            _ => false,
        })
        .await
}

fn exec_ok(pod: &Pod, container: &str, args: &[&str]) -> String {
    let out = pod.exec(container, args);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "{args:?} in {container}: {text} {}", String::from_utf8_lossy(&out.stderr));
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_to_app_on_loopback_is_attributed_joined_and_graphed() {
    let d = Daemon::start().await;
    let mut events = d.events(GetEventsRequest::default()).await;
    // 8081 holds each connection open a second after replying, so the client closes before
    // the server's FIN arrives: its received count must not lose a byte to that FIN.
    let pod = app_and_sidecar(&[
        "/bin/sh",
        "-c",
        "/bin/swtool serve-tcp 127.0.0.1 8081 1000 & exec /bin/swtool serve-tcp 127.0.0.1 8080",
    ]);

    let bind = bound(&mut events, &pod, 8080).await;
    let Some(Event::ProcessBind(b)) = &bind.event else { unreachable!() };
    let local = b.socket.as_ref().and_then(|s| s.local.as_ref()).expect("local address");
    assert_eq!((local.ip.as_str(), b.wildcard), ("127.0.0.1", false));
    assert_eq!(
        b.process.as_ref().and_then(|p| p.pod.as_ref()).map(|p| p.name.as_str()),
        Some(pod.name.as_str())
    );

    assert_eq!(
        exec_ok(&pod, "proxy", &["/bin/swtool", "connect-tcp", "127.0.0.1", "8080", "hello"]),
        "ok pong hello"
    );

    let connect = events
        .find("the sidecar's connect", WAIT, |e| match &e.event {
            Some(Event::ProcessConnect(c)) => {
                is(c.process.as_ref(), &pod, "proxy") && remote_port(c.socket.as_ref()) == 8080
            }
            _ => false,
        })
        .await;
    let Some(Event::ProcessConnect(c)) = &connect.event else { unreachable!() };
    let socket = c.socket.as_ref().expect("socket");
    assert_eq!((c.result.as_str(), socket.loopback, socket.protocol.as_str()), ("success", true, "tcp"));
    assert_eq!(container_name(c.peer.as_ref()), "app", "attributed to the port's owner");
    assert_eq!(
        c.process.as_ref().and_then(|p| p.container.as_ref()).map(|c| c.role.as_str()),
        Some("sidecar")
    );

    let accept = events
        .find(
            "the app's accept",
            WAIT,
            |e| matches!(&e.event, Some(Event::ProcessAccept(a)) if is(a.process.as_ref(), &pod, "app")),
        )
        .await;
    let Some(Event::ProcessAccept(a)) = &accept.event else { unreachable!() };
    assert_eq!(container_name(a.peer.as_ref()), "proxy", "both ends joined");
    assert_eq!(a.socket.as_ref().map(|s| s.netns), Some(socket.netns), "one network namespace");

    let close = sidecar_close(&mut events, &pod, 8080).await;
    assert_eq!(close, ("outbound".to_string(), 5, 10), "payload bytes");

    assert_eq!(
        exec_ok(&pod, "proxy", &["/bin/swtool", "connect-tcp", "127.0.0.1", "8081", "early"]),
        "ok pong early"
    );
    assert_eq!(
        sidecar_close(&mut events, &pod, 8081).await,
        ("outbound".to_string(), 5, 10),
        "closed before FIN"
    );

    // Nobody listens on 8089: refused, and nobody to attribute it to.
    let out = pod.exec("proxy", &["/bin/swtool", "connect-tcp", "127.0.0.1", "8089"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ECONNREFUSED"));
    let refused = events
        .find(
            "the refused connect",
            WAIT,
            |e| matches!(&e.event, Some(Event::ProcessConnect(c)) if remote_port(c.socket.as_ref()) == 8089),
        )
        .await;
    let Some(Event::ProcessConnect(r)) = &refused.event else { unreachable!() };
    assert_eq!(r.result, "refused");
    assert!(r.peer.is_none());

    // The flow graph: proxy -> app:8080 with the connection and its bytes.
    let flows = d
        .client()
        .await
        .get_flows(GetFlowsRequest { pod_regex: pod.name.clone(), ..Default::default() })
        .await
        .expect("GetFlows")
        .into_inner();
    assert_eq!(flows.pods.len(), 1, "{flows:?}");
    let edge = flows.pods[0].edges.iter().find(|e| e.port == 8080).expect("edge to 8080");
    assert_eq!(edge.source.as_ref().map(|c| c.name.as_str()), Some("proxy"));
    assert_eq!(edge.destination.as_ref().map(|c| c.name.as_str()), Some("app"));
    assert_eq!((edge.connections, edge.bytes_sent, edge.bytes_received), (1, 5, 10));

    let out = Command::new(bin("sidewall"))
        .args(["--server", &d.server_arg(), "flows", "--pod", &pod.name])
        .output()
        .expect("sidewall flows");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("default/{}", pod.name))
            && text.contains("proxy -> app:8080/tcp  connections=1 sent=5 received=10"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_loopback_form_reaches_the_same_owner() {
    let d = Daemon::start().await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = app_and_sidecar(&["/bin/swtool", "serve-tcp", "0.0.0.0", "8081"]);
    bound(&mut events, &pod, 8081).await;
    for target in ["127.0.0.2", "127.1.2.3", "::ffff:127.0.0.1"] {
        assert!(
            exec_ok(&pod, "proxy", &["/bin/swtool", "connect-tcp", target, "8081", "x"])
                .starts_with("ok pong")
        );
        let ev = events
            .find(&format!("connect to {target}"), WAIT, |e| match &e.event {
                Some(Event::ProcessConnect(c)) => {
                    is(c.process.as_ref(), &pod, "proxy") && remote_port(c.socket.as_ref()) == 8081
                }
                _ => false,
            })
            .await;
        let Some(Event::ProcessConnect(c)) = &ev.event else { unreachable!() };
        let s = c.socket.as_ref().expect("socket");
        let shown = target.trim_start_matches("::ffff:");
        assert_eq!(s.remote.as_ref().map(|r| r.ip.as_str()), Some(shown), "mapped addresses shown as IPv4");
        assert!(s.loopback, "{target} is loopback");
        assert_eq!(container_name(c.peer.as_ref()), "app", "{target} attributed to the app");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn udp_datagrams_and_unix_connects_are_seen() {
    let d = Daemon::with_config("sensor_set = \"strict\"").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = app_and_sidecar(&["/bin/swtool", "serve-udp", "127.0.0.1", "9000"]);
    bound(&mut events, &pod, 9000).await;
    exec_ok(&pod, "proxy", &["/bin/swtool", "send-udp", "127.0.0.1", "9000", "ping"]);
    let ev = events
        .find(
            "the sidecar's datagram",
            WAIT,
            |e| matches!(&e.event, Some(Event::ProcessDatagram(g)) if is(g.process.as_ref(), &pod, "proxy")),
        )
        .await;
    let Some(Event::ProcessDatagram(g)) = &ev.event else { unreachable!() };
    assert_eq!(remote_port(g.socket.as_ref()), 9000);
    assert_eq!(g.socket.as_ref().map(|s| s.protocol.as_str()), Some("udp"));
    assert_eq!(container_name(g.peer.as_ref()), "app");
    assert_eq!(g.count, 1);

    for path in ["/run/sidewall-test-absent.sock", "@sidewall-test-abstract"] {
        let out = pod.exec("proxy", &["/bin/swtool", "connect-unix", path]);
        assert!(!out.status.success(), "nothing listens on {path}");
        let ev = events
            .find(&format!("unix connect to {path}"), WAIT, |e| match &e.event {
                Some(Event::ProcessConnect(c)) => {
                    is(c.process.as_ref(), &pod, "proxy")
                        && c.socket.as_ref().is_some_and(|s| {
                            s.protocol == "unix" && s.remote.as_ref().is_some_and(|r| r.path == path)
                        })
                }
                _ => false,
            })
            .await;
        let Some(Event::ProcessConnect(c)) = &ev.event else { unreachable!() };
        assert_eq!(container_name(c.process.as_ref()), "proxy");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_shows_the_network_namespace_it_was_made_in() {
    let d = Daemon::start().await;
    let mut events = d.events(GetEventsRequest::default()).await;
    // A process that moves to a new network namespace without exec'ing again: what the
    // daemon knows of it from its exec is the old namespace.
    let script = "import ctypes, os, socket\n\
                  assert ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0\n\
                  print(os.readlink('/proc/self/ns/net'), flush=True)\n\
                  socket.socket().connect_ex(('127.0.0.1', 9))\n";
    let child = Command::new("python3").args(["-c", script]).output().expect("python3");
    let text = String::from_utf8_lossy(&child.stdout);
    let inode: u32 = text
        .trim()
        .strip_prefix("net:[")
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("netns of the child: {text:?} {}", String::from_utf8_lossy(&child.stderr)));
    let ev = events
        .find("the connect from the new namespace", WAIT, |e| match &e.event {
            Some(Event::ProcessConnect(c)) => {
                remote_port(c.socket.as_ref()) == 9
                    && c.process.as_ref().is_some_and(|p| p.binary.contains("python"))
            }
            _ => false,
        })
        .await;
    let Some(Event::ProcessConnect(c)) = &ev.event else { unreachable!() };
    assert_eq!(c.socket.as_ref().map(|s| s.netns), Some(inode));
}
