//! The kernel and the daemon judge a connect's or a datagram's destination alike. The kernel
//! refuses it at the cgroup connect/sendmsg hooks (`deny_destination`, over the enforcement
//! maps); the daemon decides with `Compiled::denies` which existing connections a new rule
//! forbids (and cuts them). Here one table of destinations goes through both: the real
//! programs, loaded and attached to a test cgroup, with a compiled rule written into their
//! maps by the daemon's `Enforcer`; a process in that cgroup sends to each destination (UDP
//! sendto and TCP connect) from a network namespace of the test's own, holding loopback and a
//! sink device (it drops every packet) with the pod's addresses; and `Compiled::denies` for the same rule. Both must
//! give the table's verdict. Nothing sent leaves that namespace.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
};

use harness::{TestCgroup, netns::TestNetns};
use sidewall_common::enforce as bits;
use sidewalld::{
    kernel::loader::{self, LoadOptions, SensorState},
    net::netns,
    policy::{
        enforce::{self, Compiled, Enforcer},
        model::{Action, ContainerRule, EgressRule, LoopbackRules, Mode, PortRule},
    },
};

/// The pod's own addresses, on the sink device of the test's namespace.
const POD_ADDRS: &[&str] = &["10.88.0.7/24", "fd00:88::7/64"];

/// The egress ranges both enforcing rules allow; two prefixes end inside a byte.
const EGRESS: &[&str] = &["10.1.0.0/16", "192.0.2.128/25", "2001:db8::/32", "2001:db9:8000::/33"];

/// The only loopback port `GUARDED` may reach.
const ALLOWED_PORT: u16 = 8080;

/// A destination and whether each rule denies it: `GUARDED` (loopback ports and egress
/// ranges), `EGRESS_ONLY` (egress ranges, loopback open), and nothing enforced (a monitor-mode
/// rule: every column false).
struct Case {
    ip: &'static str,
    port: u16,
    guarded: bool,
    egress_only: bool,
}

const fn case(ip: &'static str, port: u16, guarded: bool, egress_only: bool) -> Case {
    Case { ip, port, guarded, egress_only }
}

const DENY: bool = true;
const ALLOW: bool = false;

#[rustfmt::skip]
const CASES: &[Case] = &[
    // Loopback: all of 127.0.0.0/8 and ::1, in every spelling; the unspecified addresses
    // reach the local host too.
    case("127.0.0.1", 8080, ALLOW, ALLOW),
    case("127.0.0.1", 9090, DENY, ALLOW),
    case("127.255.255.254", 9090, DENY, ALLOW),
    case("::1", 8080, ALLOW, ALLOW),
    case("::1", 9090, DENY, ALLOW),
    case("0.0.0.0", 8080, ALLOW, ALLOW),
    case("0.0.0.0", 9090, DENY, ALLOW),
    case("::", 8080, ALLOW, ALLOW),
    case("::", 9090, DENY, ALLOW),
    case("::ffff:127.0.0.1", 8080, ALLOW, ALLOW),
    case("::ffff:127.0.0.1", 9090, DENY, ALLOW),
    case("::ffff:127.3.2.1", 9090, DENY, ALLOW),
    case("::ffff:0.0.0.0", 9090, DENY, ALLOW),
    // Next to loopback, and loopback-looking IPv6 that is not: egress, allowed by no range.
    case("126.255.255.255", 8080, DENY, DENY),
    case("128.0.0.1", 8080, DENY, DENY),
    case("::2", 8080, DENY, DENY),
    case("::127.0.0.1", 8080, DENY, DENY),
    case("::ffff:0.0.0.1", 8080, DENY, DENY),
    // The pod's own addresses: loopback rules cover them (they are listed with the loopback
    // ports only); under an egress-only rule they are egress, outside every range.
    case("10.88.0.7", 8080, ALLOW, DENY),
    case("10.88.0.7", 9090, DENY, DENY),
    case("::ffff:10.88.0.7", 8080, ALLOW, DENY),
    case("::ffff:10.88.0.7", 9090, DENY, DENY),
    case("fd00:88::7", 8080, ALLOW, DENY),
    case("fd00:88::7", 9090, DENY, DENY),
    case("10.88.0.8", 8080, DENY, DENY),
    // IPv4 egress, at the edges of 10.1.0.0/16 and 192.0.2.128/25; any port.
    case("10.1.0.0", 443, ALLOW, ALLOW),
    case("10.1.255.255", 9090, ALLOW, ALLOW),
    case("10.0.255.255", 443, DENY, DENY),
    case("10.2.0.0", 443, DENY, DENY),
    case("::ffff:10.1.2.3", 443, ALLOW, ALLOW),
    case("::ffff:10.2.0.1", 443, DENY, DENY),
    case("::a01:203", 443, DENY, DENY),
    case("192.0.2.128", 53, ALLOW, ALLOW),
    case("192.0.2.254", 53, ALLOW, ALLOW),
    case("192.0.2.127", 53, DENY, DENY),
    // IPv6 egress, at the edges of 2001:db8::/32 and 2001:db9:8000::/33.
    case("2001:db8::", 443, ALLOW, ALLOW),
    case("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 443, ALLOW, ALLOW),
    case("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", 443, DENY, DENY),
    case("2001:db9::1", 443, DENY, DENY),
    case("2001:db9:7fff:ffff:ffff:ffff:ffff:ffff", 443, DENY, DENY),
    case("2001:db9:8000::", 443, ALLOW, ALLOW),
    case("2001:db9:ffff:ffff:ffff:ffff:ffff:ffff", 443, ALLOW, ALLOW),
    case("2001:dba::", 443, DENY, DENY),
];

fn egress() -> Vec<EgressRule> {
    EGRESS.iter().map(|c| EgressRule { cidr: c.parse().expect("cidr"), ports: vec![] }).collect()
}

fn guarded() -> ContainerRule {
    ContainerRule {
        name: Some("proxy".into()),
        loopback: Some(LoopbackRules {
            connect: Some(vec![PortRule { container: Some("app".into()), ports: vec![ALLOWED_PORT] }]),
            bind: None,
            ..Default::default()
        }),
        egress: Some(egress()),
        action: Action::Block,
        ..Default::default()
    }
}

fn egress_only() -> ContainerRule {
    ContainerRule {
        name: Some("proxy".into()),
        egress: Some(egress()),
        action: Action::Block,
        ..Default::default()
    }
}

/// A process killed when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the kernel said to a process of `cg` in `ns` for each case: (UDP send, TCP connect).
fn probe(cg: &TestCgroup, ns: &TestNetns) -> Vec<(String, String)> {
    let mut cmd = cg.command(env!("CARGO_BIN_EXE_destination-probe"));
    ns.enter(&mut cmd).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn destination-probe");
    let mut input = String::new();
    for c in CASES {
        input.push_str(&format!("udp {ip} {port}\ntcp {ip} {port}\n", ip = c.ip, port = c.port));
    }
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write cases");
    let out = child.wait_with_output().expect("destination-probe");
    assert!(out.status.success(), "destination-probe: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2 * CASES.len(), "one answer per probe: {lines:?}");
    lines.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect()
}

#[test]
fn the_kernel_and_the_daemon_deny_the_same_destinations() {
    harness::require_root();
    let ns = TestNetns::new("dest");
    ns.add_sink("pod0", POD_ADDRS);
    let cg = TestCgroup::new("dest");

    // The pod's own addresses as the daemon reads them, from a process in the namespace, and
    // kept as it keeps them (loopback and unspecified left out: the kernel knows those).
    let holder = Reaped(ns.enter(&mut Command::new("sleep")).arg("600").spawn().expect("spawn sleep"));
    let pod_addrs: Vec<[u8; 16]> = netns::local_addrs(holder.0.id())
        .into_iter()
        .map(|ip| ip.to_canonical())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(enforce::v6_bytes)
        .collect();
    for a in POD_ADDRS {
        let ip: IpAddr = a.split('/').next().and_then(|ip| ip.parse().ok()).expect("address");
        assert!(pod_addrs.contains(&enforce::v6_bytes(ip)), "{ip} is read as the pod's: {pod_addrs:?}");
    }

    // The real programs, attached to the test's cgroup only (after it, in drop order).
    let mut loaded = loader::load(&LoadOptions {
        btf_path: Path::new("/sys/kernel/btf/vmlinux"),
        ring_buffer_bytes: 1 << 20,
        alert_ring_buffer_bytes: 1 << 16,
        cgroup_root: Some(&cg.path),
        strict: false,
        pin_dir: None,
        off: &[],
    })
    .expect("load the eBPF programs");
    for s in loaded.sensors.iter().filter(|s| matches!(s.name, "inet_connect" | "datagram_send")) {
        assert_eq!(s.state, SensorState::Attached, "{}", s.name);
    }
    let mut enforcer = Enforcer::take(&mut loaded.ebpf).expect("the enforcement maps");

    let rules = [
        (
            "guarded",
            compile(Mode::Enforce, &guarded(), &pod_addrs),
            CASES.iter().map(|c| c.guarded).collect(),
        ),
        (
            "egress-only",
            compile(Mode::Enforce, &egress_only(), &pod_addrs),
            CASES.iter().map(|c| c.egress_only).collect(),
        ),
        ("monitor", compile(Mode::Monitor, &guarded(), &pod_addrs), vec![false; CASES.len()]),
    ];
    let mut wrong = Vec::new();
    for (name, compiled, expected) in rules {
        enforcer.apply(cg.id, compiled.clone());
        let kernel = probe(&cg, &ns);
        for ((c, expect), (udp, tcp)) in CASES.iter().zip(expected).zip(kernel) {
            let to = SocketAddr::new(c.ip.parse().expect("ip"), c.port);
            let daemon = compiled.denies(to.ip(), to.port());
            let (udp_denied, tcp_denied) = (udp == "EPERM", tcp == "EPERM");
            let line = format!(
                "{name:<12} {:<46} expected {:<5} daemon {:<5} sendto {udp:<9} connect {tcp}",
                to.to_string(),
                verdict(expect),
                verdict(daemon),
            );
            println!("{line}");
            if daemon != expect || udp_denied != expect || tcp_denied != expect {
                wrong.push(line);
            }
        }
    }
    assert!(wrong.is_empty(), "kernel or daemon disagrees with the table:\n{}", wrong.join("\n"));
}

/// A rule compiled as the daemon compiles it: the pod's own addresses go with loopback rules.
fn compile(mode: Mode, rule: &ContainerRule, pod_addrs: &[[u8; 16]]) -> Compiled {
    let mut c = enforce::compile(mode, rule);
    if c.flags & bits::LOOPBACK != 0 {
        c.local = pod_addrs.to_vec();
    }
    c
}

fn verdict(deny: bool) -> &'static str {
    if deny { "deny" } else { "allow" }
}
