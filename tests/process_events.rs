//! Process lifecycle events from the real eBPF programs, over the real gRPC API.

use std::{fs, os::unix::fs::MetadataExt as _, time::Duration};

use harness::{
    Daemon, TestCgroup,
    events::{exec_of, exit_of},
};
use sidewall_proto::v1::{
    EventType, Filter, GetEventsRequest, GetEventsResponse, get_events_response::Event,
};

const WAIT: Duration = Duration::from_secs(20);

fn all() -> GetEventsRequest {
    GetEventsRequest::default()
}

fn own_ns(kind: &str) -> u32 {
    let link = fs::read_link(format!("/proc/self/ns/{kind}")).expect("ns link");
    let s = link.to_string_lossy();
    s.split_once(":[").and_then(|(_, r)| r.strip_suffix(']')).and_then(|n| n.parse().ok()).expect("inode")
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_exit_carry_process_parent_and_cgroup() {
    let d = Daemon::start().await;
    let mut events = d.events(all()).await;
    let cg = TestCgroup::new("exec");

    let mut child = cg.command("/bin/sh").args(["-c", "exit 7"]).current_dir("/tmp").spawn().expect("spawn");
    let pid = child.id();
    assert_eq!(child.wait().expect("wait").code(), Some(7));

    let exec = events.find("exec of sh", WAIT, |e| exec_of(e, pid).is_some()).await;
    let Some(Event::ProcessExec(x)) = &exec.event else { unreachable!() };
    let p = x.process.as_ref().expect("process");
    assert_eq!(p.binary, "/bin/sh");
    assert_eq!(p.arguments, ["-c", "exit 7"]);
    assert_eq!(p.cwd, "/tmp");
    assert_eq!(p.uid, 0);
    assert_eq!(p.cgroup_id, cg.id, "the event carries the test cgroup's id");
    assert_eq!(p.ppid, std::process::id());
    let parent = x.parent.as_ref().expect("parent known");
    assert_eq!(parent.pid, std::process::id());
    assert_eq!(p.parent_exec_id, parent.exec_id);
    let ns = p.namespaces.as_ref().expect("namespaces");
    assert_eq!(
        (ns.net, ns.mnt, ns.pid, ns.user),
        (own_ns("net"), own_ns("mnt"), own_ns("pid"), own_ns("user"))
    );
    assert_eq!(exec.node_name, "test-node");
    assert!(exec.time.is_some());

    let exit = events.find("exit of sh", WAIT, |e| exit_of(e, pid).is_some()).await;
    let x = exit_of(&exit, pid).expect("exit");
    assert_eq!((x.status, x.signal.as_str()), (7, ""));
    assert_eq!(x.process.as_ref().expect("process").exec_id, p.exec_id, "same process image");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_process_reports_the_signal() {
    let d = Daemon::start().await;
    let mut events = d.events(all()).await;
    let cg = TestCgroup::new("kill");
    let mut child = cg.command("/bin/sleep").arg("30").spawn().expect("spawn");
    let pid = child.id();
    events.find("exec of sleep", WAIT, |e| exec_of(e, pid).is_some()).await;
    child.kill().expect("kill");
    child.wait().expect("wait");
    let exit = events.find("exit of sleep", WAIT, |e| exit_of(e, pid).is_some()).await;
    let x = exit_of(&exit, pid).expect("exit");
    assert_eq!(x.signal, "SIGKILL");
}

#[tokio::test(flavor = "multi_thread")]
async fn long_argument_lists_are_cut_and_flagged() {
    let d = Daemon::start().await;
    let mut events = d.events(all()).await;
    let cg = TestCgroup::new("args");
    let long: Vec<String> = (0..200).map(|i| format!("argument-{i:04}")).collect();
    let mut child = cg.command("/bin/true").args(&long).spawn().expect("spawn");
    let pid = child.id();
    child.wait().expect("wait");
    let ev = events.find("exec of true", WAIT, |e| exec_of(e, pid).is_some()).await;
    let p = exec_of(&ev, pid).expect("exec");
    assert!(p.arguments_truncated);
    assert!(p.arguments.len() < long.len());
    assert_eq!(p.arguments[..10], long[..10], "the kept arguments are exact");
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_older_than_the_daemon_are_known() {
    let cg = TestCgroup::new("seed");
    let mut old = cg.command("/bin/sleep").arg("300").spawn().expect("spawn");
    let pid = old.id();
    let d = Daemon::start().await;
    let mut events = d.events(all()).await;
    old.kill().expect("kill");
    old.wait().expect("wait");
    let ev = events.find("exit of the old sleep", WAIT, |e| exit_of(e, pid).is_some()).await;
    let p = exit_of(&ev, pid).and_then(|x| x.process.as_ref()).expect("process");
    assert_eq!(p.source, "procfs");
    assert_eq!(p.binary, fs::canonicalize("/bin/sleep").expect("sleep").to_string_lossy());
    assert_eq!(p.arguments, ["300"]);
    assert_eq!(p.cgroup_id, cg.id);
    assert!(!p.parent_exec_id.is_empty(), "its parent (this test) was seeded too");
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_select_and_exclude() {
    let d = Daemon::start().await;
    // Binaries of this test alone: other tests run /bin/true at the same time.
    let yes = d.private_copy("/bin/true", "filter-yes");
    let no = d.private_copy("/bin/true", "filter-no");
    let other = d.private_copy("/bin/true", "filter-other");
    let dir = regex::escape(&d.dir.path().display().to_string());
    let allow = Filter {
        binary_regex: vec![format!("{dir}/filter-(yes|no)")],
        event_set: vec![EventType::ProcessExec as i32],
        ..Default::default()
    };
    let deny = Filter { binary_regex: vec![".*-no".into()], ..Default::default() };
    let mut selected = d.events(GetEventsRequest { allow_list: vec![allow], deny_list: vec![deny] }).await;
    let cg = TestCgroup::new("filter");
    let run = |bin: &std::path::Path| {
        let mut c = cg.command(bin).spawn().expect("spawn");
        let pid = c.id();
        c.wait().expect("wait");
        pid
    };
    run(&no);
    run(&other);
    let yes_pid = run(&yes);
    run(&yes);
    // Only the two execs of `yes`: not `no` (denied), not `other` (not allowed), no exits.
    let first = selected.next(WAIT).await.expect("an event");
    assert!(exec_of(&first, yes_pid).is_some(), "first selected event is the exec of yes: {first:?}");
    let second = selected.next(WAIT).await.expect("a second event");
    match &second.event {
        Some(Event::ProcessExec(x)) => {
            assert_eq!(x.process.as_ref().map(|p| p.binary.as_str()), yes.to_str())
        }
        other => panic!("only process_exec of yes is selected, got {other:?}"),
    }
    assert!(selected.next(Duration::from_secs(1)).await.is_none(), "nothing else: {:?}", selected.seen);

    // A pid filter selects that process alone.
    let by_pid = Filter { pid: vec![yes_pid], ..Default::default() };
    let mut one = d.events(GetEventsRequest { allow_list: vec![by_pid], ..Default::default() }).await;
    run(&yes);
    assert!(one.next(Duration::from_secs(2)).await.is_none(), "events of other pids are not selected");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_regex_is_refused_with_its_place() {
    let d = Daemon::start().await;
    let bad = Filter { binary_regex: vec!["ok".into(), "(unclosed".into()], ..Default::default() };
    let err = d
        .client()
        .await
        .get_events(GetEventsRequest { allow_list: vec![bad], ..Default::default() })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("allow_list[0].binary_regex[1]"), "{}", err.message());
    assert!(err.message().contains("(unclosed"), "{}", err.message());
}

/// One client stops reading. The other still receives every event, promptly and in order;
/// the stalled one loses events, the losses are counted in status, and it is told how many
/// when it reads again.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_client_loses_counted_events_without_delaying_others() {
    const N: usize = 1500;
    let d = Daemon::with_config("subscriber_queue = 64").await;
    let mut stalled = d.events(all()).await;
    let marker = d.private_copy("/bin/true", "stall-marker");
    let only_marker = Filter {
        binary_regex: vec![regex::escape(&marker.display().to_string())],
        event_set: vec![EventType::ProcessExec as i32],
        ..Default::default()
    };
    let mut live = d.events(GetEventsRequest { allow_list: vec![only_marker], ..Default::default() }).await;
    let cg = TestCgroup::new("stall");

    for i in 0..N {
        let mut c = cg.command(&marker).spawn().expect("spawn");
        let pid = c.id();
        c.wait().expect("wait");
        let ev = live.next(WAIT).await.unwrap_or_else(|| panic!("live client stuck after {i} of {N}"));
        let got = match &ev.event {
            Some(Event::ProcessExec(x)) => x.process.as_ref().map(|p| p.pid),
            other => panic!("live client: unexpected {other:?}"),
        };
        assert_eq!(got, Some(pid), "event {i}: the live client loses nothing");
    }
    let lost = d.status().await.lost_by_stage.get("subscriber_queue").copied().unwrap_or(0);
    assert!(lost > 0, "the stalled client's losses are counted");

    // Read again: the stalled client learns how much it lost, ahead of the next event.
    cg.command(&marker).status().expect("run");
    let report = stalled
        .find("a lost_events record", Duration::from_secs(60), |e| {
            matches!(e.event, Some(Event::LostEvents(_)))
        })
        .await;
    let Some(Event::LostEvents(l)) = report.event else { unreachable!() };
    assert_eq!(l.stage, "subscriber_queue");
    let lost_now = d.status().await.lost_by_stage.get("subscriber_queue").copied().unwrap_or(0);
    assert!(l.count > 0 && l.count <= lost_now, "{} reported, {lost_now} counted", l.count);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_export_lines_parse_back_into_events() {
    let d = Daemon::start().await;
    let cg = TestCgroup::new("export");
    let mut child = cg
        .command("/bin/echo")
        .args(["exported", "line"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    child.wait().expect("wait");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = fs::read_to_string(&d.export).unwrap_or_default();
        // A line still being written has no newline yet: a reader takes whole lines only.
        let lines: Vec<&str> = text.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')).collect();
        let parsed: Vec<GetEventsResponse> =
            lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        if let Some(i) = parsed.iter().position(|e| exec_of(e, pid).is_some()) {
            let raw: serde_json::Value = serde_json::from_str(lines[i]).expect("json");
            let p = &raw["process_exec"]["process"];
            assert_eq!(p["binary"], "/bin/echo");
            assert_eq!(p["arguments"], serde_json::json!(["exported", "line"]));
            assert_eq!(p["cgroup_id"], cg.id.to_string(), "uint64 as a string, per proto3 JSON");
            assert_eq!(raw["node_name"], "test-node");
            assert!(raw["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", raw["time"]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "exec of echo not exported:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mode = fs::metadata(&d.socket).expect("socket").mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket is private to root");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_lists_sensors_and_counters() {
    let d = Daemon::start().await;
    let cg = TestCgroup::new("status");
    cg.command("/bin/true").status().expect("run");
    let deadline = std::time::Instant::now() + WAIT;
    let s = loop {
        let s = d.status().await;
        if s.events_by_kind.get("process_exec").is_some_and(|n| *n > 0) && s.process_cache_size > 0 {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "counters never moved: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for name in ["process_exec", "process_exit", "process_fork"] {
        let sensor = s.sensors.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("{name} listed"));
        assert_eq!(sensor.state, "attached", "{sensor:?}");
    }
    assert_eq!(s.kernel, fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease").trim());
    assert_eq!(s.node_name, "test-node");
    assert!(s.exporters.iter().any(|e| e.name == "export_file" && e.state == "ok"));
}
