//! One readable, greppable line per event:
//!
//! ```text
//! 2026-11-27T10:01:02.123Z exec   default/web:app          /usr/bin/curl -s http://x  pid=1234 ppid=1 uid=0
//! ```
//!
//! Columns: time, kind, workload, command, key=value details. Plain ASCII on purpose: emoji have
//! no reliable terminal width, so they would skew the columns, and they are awkward to grep.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use sidewall_proto::v1::{
    GetEventsResponse, LostEvents, PolicyChange, PolicyVersion, Process, ProcessExec, ProcessExit, Socket,
    SocketAddress, get_events_response::Event, policy_actor::Actor,
};

const TIME_WIDTH: usize = 24;
const KIND_WIDTH: usize = 6;
const WORKLOAD_WIDTH: usize = 24;
const COMMAND_WIDTH: usize = 40;
/// Enough of a runtime container id to be unique on a node, as `docker ps` shows it.
const SHORT_ID: usize = 12;

pub fn compact(ev: &GetEventsResponse) -> String {
    let rest = match &ev.event {
        Some(Event::ProcessExec(exec)) => exec_line(exec),
        Some(Event::ProcessExit(exit)) => exit_line(exit),
        Some(Event::ProcessConnect(c)) => {
            let mut d = socket_details(c.socket.as_ref(), false);
            d.extend(peer(c.peer.as_ref()));
            d.push(format!("result={}", c.result));
            process_line("connect", c.process.as_ref(), &with_pid(d, c.process.as_ref()))
        }
        Some(Event::ProcessAccept(a)) => {
            let mut d = socket_details(a.socket.as_ref(), true);
            d.extend(peer(a.peer.as_ref()));
            process_line("accept", a.process.as_ref(), &with_pid(d, a.process.as_ref()))
        }
        Some(Event::ProcessBind(b)) => {
            let mut d = socket_details(b.socket.as_ref(), false);
            if b.wildcard {
                d.push("wildcard".into());
            }
            process_line("bind", b.process.as_ref(), &with_pid(d, b.process.as_ref()))
        }
        Some(Event::ProcessClose(c)) => {
            let mut d = socket_details(c.socket.as_ref(), c.direction == "inbound");
            d.push(format!("sent={} received={}", c.bytes_sent, c.bytes_received));
            d.extend(peer(c.peer.as_ref()));
            process_line("close", c.process.as_ref(), &with_pid(d, c.process.as_ref()))
        }
        Some(Event::ProcessDatagram(g)) => {
            let mut d = socket_details(g.socket.as_ref(), false);
            d.extend(peer(g.peer.as_ref()));
            d.push(format!("count={}", g.count));
            process_line("send", g.process.as_ref(), &with_pid(d, g.process.as_ref()))
        }
        Some(Event::ProcessNamespace(n)) => {
            let mut d = vec![n.operation.clone(), format!("changed={}", n.changed.join(","))];
            if n.target_host {
                d.push("target=host".into());
            } else if let Some(t) = n.target.as_ref() {
                d.push(format!("target={}", workload(t)));
            }
            d.push(format!("result={}", n.result));
            process_line("ns", n.process.as_ref(), &with_pid(d, n.process.as_ref()))
        }
        Some(Event::ProcessAccess(a)) => {
            let mut d = vec![a.access.clone()];
            if !a.path.is_empty() {
                d.push(quote(&a.path));
            }
            if let Some(t) = a.target.as_ref() {
                d.push(format!("target={}", workload(t)));
                d.push(format!("target_pid={}", t.pid));
            }
            if a.cross_container {
                d.push("cross_container".into());
            }
            process_line("access", a.process.as_ref(), &with_pid(d, a.process.as_ref()))
        }
        Some(Event::PolicyAlert(a)) => {
            let mut d = vec![
                format!("rule={}", a.rule_id),
                format!("action={}", a.action),
                format!("severity={}", a.severity),
                format!("mitre={}", a.mitre_technique),
            ];
            d.extend(peer(a.peer.as_ref()));
            if a.count > 0 {
                // An aggregated alert: refusals counted over the container's alert budget.
                d.push(format!("count={}", a.count));
                if !a.sample.is_empty() {
                    d.push(format!("sample={}", a.sample.join(",")));
                }
            }
            d.push(format!("policy={}", a.policy));
            process_line("alert", a.process.as_ref(), &with_pid(d, a.process.as_ref()))
        }
        Some(Event::LostEvents(lost)) => columns("lost", &lost_details(lost)),
        Some(Event::PolicyChange(c)) => columns("policy", &change_details(c)),
        // New oneof variants land here until they get a format of their own.
        #[allow(unreachable_patterns)]
        Some(_) => other_line(ev),
        None => columns("empty", &[]),
    };
    let line = format!("{:<TIME_WIDTH$} {rest}", time(ev));
    line.trim_end().to_string()
}

fn exec_line(exec: &ProcessExec) -> String {
    let p = exec.process.as_ref();
    process_line("exec", p, &ids(p, true))
}

fn exit_line(exit: &ProcessExit) -> String {
    let p = exit.process.as_ref();
    let mut details = ids(p, false);
    if exit.signal.is_empty() {
        details.push(format!("status={}", exit.status));
    } else {
        details.push(format!("signal={}", exit.signal));
    }
    if exit.core_dumped {
        details.push("core_dumped=true".into());
    }
    process_line("exit", p, &details)
}

/// "tcp 127.0.0.1:43480 -> 127.0.0.1:8080 loopback"; `inbound` shows remote -> local.
fn socket_details(s: Option<&Socket>, inbound: bool) -> Vec<String> {
    let Some(s) = s else { return Vec::new() };
    let local = s.local.as_ref().map(address);
    let remote = s.remote.as_ref().map(address);
    let flow = match (local, remote, inbound) {
        (Some(l), Some(r), false) => format!("{l} -> {r}"),
        (Some(l), Some(r), true) => format!("{r} -> {l}"),
        (None, Some(r), _) => format!("-> {r}"),
        (Some(l), None, _) => l,
        (None, None, _) => String::new(),
    };
    let mut d = vec![s.protocol.clone(), flow];
    if s.loopback {
        d.push("loopback".into());
    }
    d
}

fn address(a: &SocketAddress) -> String {
    if !a.path.is_empty() {
        return quote(&a.path);
    }
    if a.ip.contains(':') { format!("[{}]:{}", a.ip, a.port) } else { format!("{}:{}", a.ip, a.port) }
}

fn peer(p: Option<&Process>) -> Option<String> {
    p.map(|p| format!("peer={}", workload(p)))
}

fn with_pid(mut details: Vec<String>, p: Option<&Process>) -> Vec<String> {
    details.extend(ids(p, false));
    details
}

fn lost_details(lost: &LostEvents) -> Vec<String> {
    let mut details = vec![format!("stage={}", lost.stage), format!("count={}", lost.count)];
    if !lost.by_kind.is_empty() {
        details.push(format!("by_kind={}", sorted_pairs(&lost.by_kind)));
    }
    details
}

/// `default/web mode_changed enforce->monitor source=api uid=0 ... hash=sha256:0123456789ab`.
fn change_details(c: &PolicyChange) -> Vec<String> {
    let mode = |v: Option<&PolicyVersion>| v.map_or("none", |v| v.mode.as_str()).to_string();
    let mut d = vec![
        c.policy.clone(),
        c.change.clone(),
        format!("{}->{}", mode(c.before.as_ref()), mode(c.after.as_ref())),
        format!("source={}", c.source),
    ];
    d.extend(actor_details(c.actor.as_ref().and_then(|a| a.actor.as_ref())));
    if let Some(v) = c.after.as_ref().or(c.before.as_ref()) {
        d.push(format!("hash={}", v.hash.chars().take(7 + SHORT_ID).collect::<String>()));
    }
    d
}

fn actor_details(actor: Option<&Actor>) -> Vec<String> {
    match actor {
        Some(Actor::Unix(u)) => vec![
            format!("uid={}", u.uid),
            format!("gid={}", u.gid),
            format!("pid={}", u.pid),
            format!("binary={}", quote(&u.binary)),
            format!("role={}", u.role),
        ],
        Some(Actor::Tls(t)) => vec![
            format!("subject={}", quote(&t.subject)),
            format!("name={}", quote(&t.name)),
            format!("address={}", t.address),
            format!("role={}", t.role),
        ],
        Some(Actor::InsecureTcp(t)) => {
            vec![format!("address={}", t.address), format!("role={}", t.role), "plaintext".into()]
        }
        Some(Actor::File(f)) => vec![format!("file={}", quote(f))],
        Some(Actor::Kubernetes(k)) => vec![
            format!("object={}/{}", k.namespace, k.name),
            format!("resource_version={}", k.resource_version),
        ],
        Some(Actor::Builtin(_)) => vec!["builtin".into()],
        None => Vec::new(),
    }
}

/// For variants this client predates: the name and process come from the JSON form.
fn other_line(ev: &GetEventsResponse) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(ev) else {
        return columns("unknown", &[]);
    };
    let Some((name, body)) = fields.iter().find(|(k, _)| !matches!(k.as_str(), "node_name" | "time")) else {
        return columns("empty", &[]);
    };
    let kind = name.strip_prefix("process_").unwrap_or(name);
    let process = body.get("process").and_then(|p| serde_json::from_value::<Process>(p.clone()).ok());
    match process {
        Some(p) => process_line(kind, Some(&p), &ids(Some(&p), false)),
        None => columns(kind, &[]),
    }
}

fn process_line(kind: &str, p: Option<&Process>, details: &[String]) -> String {
    let (workload, command) = match p {
        Some(p) => (workload(p), command(p)),
        None => ("?".to_string(), "?".to_string()),
    };
    format!("{kind:<KIND_WIDTH$} {workload:<WORKLOAD_WIDTH$} {command:<COMMAND_WIDTH$} {}", details.join(" "))
}

fn columns(kind: &str, details: &[String]) -> String {
    format!("{kind:<KIND_WIDTH$} {}", details.join(" "))
}

fn ids(p: Option<&Process>, with_parent_and_uid: bool) -> Vec<String> {
    let Some(p) = p else {
        return Vec::new();
    };
    let mut ids = vec![format!("pid={}", p.pid)];
    if with_parent_and_uid {
        ids.push(format!("ppid={}", p.ppid));
        ids.push(format!("uid={}", p.uid));
    }
    ids
}

/// `namespace/pod:container`, `container:<name or short id>`, or `host`.
fn workload(p: &Process) -> String {
    let pod = p.pod.as_ref().filter(|pod| !pod.name.is_empty());
    let container = p.container.as_ref().and_then(|c| {
        if !c.name.is_empty() {
            Some(c.name.clone())
        } else if !c.id.is_empty() {
            Some(c.id.chars().take(SHORT_ID).collect())
        } else {
            None
        }
    });
    match (pod, container) {
        (Some(pod), Some(c)) => format!("{}/{}:{}", pod.namespace, pod.name, c),
        (Some(pod), None) => format!("{}/{}", pod.namespace, pod.name),
        (None, Some(c)) => format!("container:{c}"),
        (None, None) => "host".to_string(),
    }
}

fn command(p: &Process) -> String {
    let binary = if p.binary.is_empty() { "?" } else { &p.binary };
    let mut words: Vec<String> =
        std::iter::once(binary).chain(p.arguments.iter().map(String::as_str)).map(quote).collect();
    if p.arguments_truncated {
        words.push("...".into());
    }
    words.join(" ")
}

/// Quotes words that would blur word boundaries or break the line (spaces, quotes, newlines,
/// escape sequences); the rest stay bare so that they grep as typed.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && !word.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'));
    if plain { word.to_string() } else { format!("{word:?}") }
}

fn sorted_pairs(map: &HashMap<String, u64>) -> String {
    let mut pairs: Vec<_> = map.iter().collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",")
}

/// RFC 3339 UTC to the millisecond, or `-` when absent or out of range.
fn time(ev: &GetEventsResponse) -> String {
    // Only the fields are used, not the Timestamp type's own helpers, so that this does not
    // depend on which crate provides google.protobuf.Timestamp.
    ev.time
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_change_line_names_who_and_what() {
        use sidewall_proto::v1::{PolicyActor, UnixPeer};
        let v = |mode: &str| PolicyVersion { hash: format!("sha256:{}", "ab".repeat(32)), mode: mode.into() };
        let ev = at(Event::PolicyChange(PolicyChange {
            policy: "shop/web".into(),
            change: "mode_changed".into(),
            source: "api".into(),
            actor: Some(PolicyActor {
                actor: Some(Actor::Unix(UnixPeer {
                    uid: 0,
                    gid: 0,
                    pid: 4242,
                    binary: "/usr/bin/sidewall".into(),
                    role: "admin".into(),
                })),
            }),
            before: Some(v("enforce")),
            after: Some(v("monitor")),
        }));
        assert_eq!(
            compact(&ev),
            "2026-11-27T10:01:02.123Z policy shop/web mode_changed enforce->monitor source=api uid=0 gid=0 \
             pid=4242 binary=/usr/bin/sidewall role=admin hash=sha256:abababababab"
        );
    }

    #[test]
    fn connect_line_names_the_peer() {
        let socket = Socket {
            protocol: "tcp".into(),
            local: Some(SocketAddress { ip: "127.0.0.1".into(), port: 43480, ..Default::default() }),
            remote: Some(SocketAddress { ip: "127.0.0.1".into(), port: 8080, ..Default::default() }),
            loopback: true,
            ..Default::default()
        };
        let mut app = in_pod(process("/bin/app", &[]));
        if let Some(c) = app.container.as_mut() {
            c.name = "app".into();
        }
        let mut proxy = in_pod(process("/bin/nc", &["127.0.0.1", "8080"]));
        if let Some(c) = proxy.container.as_mut() {
            c.name = "proxy".into();
        }
        let ev = at(Event::ProcessConnect(sidewall_proto::v1::ProcessConnect {
            process: Some(proxy),
            socket: Some(socket),
            result: "success".into(),
            peer: Some(app),
            ..Default::default()
        }));
        let line = compact(&ev);
        assert!(line.contains("connect default/web:proxy"), "{line}");
        assert!(
            line.ends_with(
                "tcp 127.0.0.1:43480 -> 127.0.0.1:8080 loopback peer=default/web:app result=success pid=1234"
            ),
            "{line}"
        );
    }
    use sidewall_proto::v1::{Container, Pod};

    const T: &str = "2026-11-27T10:01:02.123Z";

    fn at(ev: Event) -> GetEventsResponse {
        let mut response =
            GetEventsResponse { event: Some(ev), node_name: "n1".into(), time: Some(Default::default()) };
        if let Some(t) = &mut response.time {
            // 2026-11-27T10:01:02.123456789Z
            t.seconds = 1_795_773_662;
            t.nanos = 123_456_789;
        }
        response
    }

    fn process(binary: &str, args: &[&str]) -> Process {
        Process {
            pid: 1234,
            ppid: 1,
            uid: 0,
            binary: binary.into(),
            arguments: args.iter().map(|a| a.to_string()).collect(),
            ..Process::default()
        }
    }

    fn in_pod(mut p: Process) -> Process {
        p.pod = Some(Pod { namespace: "default".into(), name: "web".into(), ..Pod::default() });
        p.container =
            Some(Container { id: "0123456789abcdef0123".into(), name: "app".into(), ..Container::default() });
        p
    }

    fn exec(p: Process) -> GetEventsResponse {
        at(Event::ProcessExec(ProcessExec { process: Some(p), ..ProcessExec::default() }))
    }

    fn exit(status: u32, signal: &str, core_dumped: bool) -> GetEventsResponse {
        at(Event::ProcessExit(ProcessExit {
            process: Some(process("/bin/ls", &["-l"])),
            status,
            signal: signal.into(),
            core_dumped,
            ..ProcessExit::default()
        }))
    }

    #[test]
    fn exec_in_a_pod() {
        let ev = exec(in_pod(process("/usr/bin/curl", &["-s", "http://127.0.0.1:8080"])));
        assert_eq!(
            compact(&ev),
            format!(
                "{T} exec   default/web:app          /usr/bin/curl -s http://127.0.0.1:8080   \
                 pid=1234 ppid=1 uid=0"
            )
        );
    }

    #[test]
    fn exit_on_the_host() {
        assert_eq!(
            compact(&exit(0, "", false)),
            format!(
                "{T} exit   {:<WORKLOAD_WIDTH$} {:<COMMAND_WIDTH$} pid=1234 status=0",
                "host", "/bin/ls -l"
            )
        );
    }

    #[test]
    fn exit_by_signal_with_core() {
        let line = compact(&exit(0, "SIGSEGV", true));
        assert!(line.ends_with("pid=1234 signal=SIGSEGV core_dumped=true"), "{line}");
        assert!(!line.contains("status="), "{line}");
    }

    #[test]
    fn columns_line_up() {
        let a = compact(&exec(in_pod(process("/a", &[]))));
        let b = compact(&exit(1, "", false));
        assert_eq!(a.find("/a"), b.find("/bin/ls"));
        assert_eq!(a.find("pid="), b.find("pid="));
    }

    #[test]
    fn policy_alert_names_rule_action_peer_and_policy() {
        let mut proxy = in_pod(process("/usr/bin/curl", &["http://127.0.0.1:15000"]));
        if let Some(c) = proxy.container.as_mut() {
            c.name = "istio-proxy".into();
        }
        let mut alert = sidewall_proto::v1::PolicyAlert {
            rule_id: "loopback-egress".into(),
            severity: "high".into(),
            mitre_technique: "T1021".into(),
            policy: "default/web".into(),
            action: "would_block".into(),
            process: Some(in_pod(process("/bin/app", &[]))),
            peer: Some(proxy),
            mode: "monitor".into(),
            ..Default::default()
        };
        assert_eq!(
            compact(&at(Event::PolicyAlert(alert.clone()))),
            format!(
                "{T} alert  {:<WORKLOAD_WIDTH$} {:<COMMAND_WIDTH$} rule=loopback-egress \
                 action=would_block severity=high mitre=T1021 peer=default/web:istio-proxy \
                 policy=default/web pid=1234",
                "default/web:app", "/bin/app"
            )
        );
        alert.peer = None;
        let line = compact(&at(Event::PolicyAlert(alert.clone())));
        assert!(line.ends_with("mitre=T1021 policy=default/web pid=1234"), "{line}");
        // An aggregated alert says how many refusals it stands for, and where some went.
        alert.count = 1000;
        alert.sample = vec!["127.0.0.1:9090".into(), "127.0.0.1:9091".into()];
        let line = compact(&at(Event::PolicyAlert(alert)));
        assert!(
            line.contains("count=1000 sample=127.0.0.1:9090,127.0.0.1:9091 policy=default/web"),
            "{line}"
        );
    }

    #[test]
    fn lost_events() {
        let ev = at(Event::LostEvents(LostEvents {
            stage: "subscriber_queue".into(),
            count: 12,
            by_kind: HashMap::from([("process_exit".into(), 2), ("process_exec".into(), 10)]),
        }));
        assert_eq!(
            compact(&ev),
            format!("{T} lost   stage=subscriber_queue count=12 by_kind=process_exec:10,process_exit:2")
        );
    }

    #[test]
    fn workload_forms() {
        let mut p = process("/x", &[]);
        assert_eq!(workload(&p), "host");
        p.container = Some(Container { id: "0123456789abcdef0123".into(), ..Container::default() });
        assert_eq!(workload(&p), "container:0123456789ab");
        p.container = Some(Container { name: "redis".into(), ..Container::default() });
        assert_eq!(workload(&p), "container:redis");
        // A host process may carry an empty container (role "host").
        p.container = Some(Container { role: "host".into(), ..Container::default() });
        assert_eq!(workload(&p), "host");
        p = in_pod(p);
        p.container = None;
        assert_eq!(workload(&p), "default/web");
    }

    #[test]
    fn awkward_arguments_are_quoted_on_one_line() {
        let mut p = process("/bin/sh", &["-c", "echo hi\nrm -rf /", "", "\u{1b}[31m", "it's"]);
        p.arguments_truncated = true;
        assert_eq!(command(&p), r#"/bin/sh -c "echo hi\nrm -rf /" "" "\u{1b}[31m" "it's" ..."#);
        assert!(!compact(&exec(p)).contains('\n'));
    }

    #[test]
    fn missing_parts() {
        let ev = GetEventsResponse {
            event: Some(Event::ProcessExec(ProcessExec::default())),
            ..GetEventsResponse::default()
        };
        assert_eq!(compact(&ev), format!("{:<TIME_WIDTH$} exec   {:<WORKLOAD_WIDTH$} ?", "-", "?"));
        assert_eq!(compact(&GetEventsResponse::default()), format!("{:<TIME_WIDTH$} empty", "-"));
    }

    #[test]
    fn unknown_variants_fall_back_to_the_json_form() {
        let ev = exec(in_pod(process("/usr/bin/id", &["-u"])));
        assert_eq!(
            other_line(&ev).trim_end(),
            format!(
                "exec   {:<WORKLOAD_WIDTH$} {:<COMMAND_WIDTH$} pid=1234",
                "default/web:app", "/usr/bin/id -u"
            )
        );
    }
}
