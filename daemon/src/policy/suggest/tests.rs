//! The suggestion rules on a recorded export (`observed.jsonl`): two pods of one Deployment
//! (app and an envoy sidecar) and a pod without labels.

use super::*;
use crate::policy::replay::parse_event;

const OBSERVED: &str = include_str!("observed.jsonl");
/// The suggestion for the web workload, as it must read: any change to the rules or their
/// rendering shows here.
const WEB: &str = include_str!("web.yaml");

fn events() -> Vec<pb::GetEventsResponse> {
    OBSERVED.lines().map(|l| parse_event(l).expect("recorded event")).collect()
}

fn observe(events: &[pb::GetEventsResponse]) -> Observer {
    let mut o = Observer::new();
    for ev in events {
        o.observe(ev);
    }
    o
}

#[test]
fn pods_of_one_workload_merge_and_workloads_are_ordered() {
    let s = observe(&events()).suggest(&Filter::default());
    let names: Vec<(&str, &str)> = s.iter().map(|s| (s.namespace.as_str(), s.name.as_str())).collect();
    assert_eq!(names, [("shop", "batch"), ("shop", "web")], "a workload per owner, by namespace and name");
    assert_eq!(s[1].pods, ["web-6d5f9c7b8-aaaaa", "web-6d5f9c7b8-bbbbb"]);
    assert_eq!(s[0].pods, ["batch-x7k2p"]);
}

#[test]
fn the_suggestion_reads_as_expected_and_parses() {
    let s = observe(&events()).suggest(&Filter::default());
    assert_eq!(s[1].document, WEB, "got:\n{}", s[1].document);
    for one in &s {
        let p = parse(&one.document, "suggestion").expect("a valid SidecarPolicy");
        assert_eq!(p.spec.mode, crate::policy::model::Mode::Monitor);
    }
    let web = parse(&s[1].document, "web").expect("valid");
    assert_eq!(web.spec.selector.pod_labels, BTreeMap::from([("app".to_string(), "web".to_string())]));
    let proxy = web.spec.containers.iter().find(|r| r.name.as_deref() == Some("proxy")).expect("proxy rule");
    let egress: Vec<String> =
        proxy.egress.as_ref().expect("egress").iter().map(|e| e.cidr.to_string()).collect();
    assert_eq!(
        egress,
        ["10.1.2.0/24", "10.1.3.9/32", "10.96.0.10/32"],
        "four of a /24 merge, one stays alone"
    );
}

#[test]
fn what_the_builtin_policy_forbids_is_flagged_and_stays_denied() {
    let s = observe(&events()).suggest(&Filter::default());
    assert_eq!(s[1].flagged.len(), 1, "{:?}", s[1].flagged);
    assert!(s[1].flagged[0].starts_with("proxy: namespace-transition:"), "{:?}", s[1].flagged);
    let web = parse(&s[1].document, "web").expect("valid");
    let proxy = web.spec.containers.iter().find(|r| r.name.as_deref() == Some("proxy")).expect("proxy rule");
    assert_eq!(proxy.namespace_changes, crate::policy::model::Permission::Deny);
    assert!(s[1].document.contains("# FLAGGED"));
}

#[test]
fn same_events_in_any_order_give_the_same_output() {
    let mut evs = events();
    let first = observe(&evs).suggest(&Filter::default());
    evs.reverse();
    let reversed = observe(&evs).suggest(&Filter::default());
    assert_eq!(first, reversed);
    // Twice the same events: only the counts in the comments change, not the rules.
    let doubled: Vec<_> = evs.iter().chain(evs.iter()).cloned().collect();
    let twice = observe(&doubled).suggest(&Filter::default());
    let rules = |d: &str| parse(d, "x").expect("valid").spec;
    assert_eq!(rules(&first[1].document), rules(&twice[1].document));
    assert!(twice[1].document.contains("6 times"), "{}", twice[1].document);
}

#[test]
fn filters_and_since() {
    let o = observe(&events());
    let ns = Filter { namespace: Some("other".into()), ..Filter::default() };
    assert!(o.suggest(&ns).is_empty());
    let pod = Filter { pod: Some(Regex::new("^(?:batch-.*)$").expect("re")), ..Filter::default() };
    assert_eq!(o.suggest(&pod).len(), 1);
    let sel = Filter { selector: BTreeMap::from([("app".into(), "web".into())]), ..Filter::default() };
    assert_eq!(o.suggest(&sel)[0].name, "web");
    // Since the 15th event: only what came after (the sidecar's unshare, the batch pod).
    let t15 = events()[14].time.as_ref().expect("time").seconds;
    let late = o.suggest(&Filter { since: t15, ..Filter::default() });
    let web = late.iter().find(|s| s.name == "web").expect("web");
    let spec = parse(&web.document, "late").expect("valid").spec;
    let proxy = spec.containers.iter().find(|r| r.name.as_deref() == Some("proxy")).expect("proxy rule");
    assert_eq!(proxy.egress.as_deref(), Some(&[][..]), "older egress left out");
}

#[test]
fn base_names_and_quoting() {
    assert_eq!(base_name("web-6d5f9c7b8-x2k4q"), "web");
    assert_eq!(base_name("agent-x2k4q"), "agent");
    assert_eq!(base_name("db-0"), "db");
    assert_eq!(base_name("standalone"), "standalone");
    assert_eq!(base_name("nginx-proxy"), "nginx-proxy", "a word is not a controller's suffix");
    assert_eq!(quote("app"), "app");
    assert_eq!(quote("true"), "\"true\"");
    assert_eq!(quote("@envoy admin"), "\"@envoy admin\"");
}

/// A real recording (sidewalld's export, the strict sensor set) of the scenario catalog's
/// benign pod under podman: its healthy traffic, `podman exec`'s runtime setup, then three
/// attacks refused by a suggested policy in enforce mode.
const BENIGN_POD: &str = include_str!("benign-pod.jsonl");

#[test]
fn a_recorded_pod_gives_its_flows_and_nothing_of_the_runtime() {
    let events: Vec<pb::GetEventsResponse> =
        BENIGN_POD.lines().map(|l| parse_event(l).expect("recorded event")).collect();
    let s = observe(&events).suggest(&Filter::default());
    assert_eq!(s.len(), 1);
    let spec = parse(&s[0].document, "recorded").expect("valid").spec;
    let names: Vec<&str> = spec.containers.iter().filter_map(|r| r.name.as_deref()).collect();
    assert_eq!(names, ["log-shipper", "mesh-proxy", "storefront"], "no rule for the infra container");
    let rule = |n: &str| spec.containers.iter().find(|r| r.name.as_deref() == Some(n)).expect("rule");
    let connect = |n: &str| {
        let l = rule(n).loopback.clone().expect("loopback");
        l.connect
            .expect("connect")
            .iter()
            .map(|r| (r.container.clone().unwrap_or_default(), r.ports.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(connect("log-shipper"), [("mesh-proxy".to_string(), vec![15001])]);
    assert_eq!(connect("mesh-proxy"), [("storefront".to_string(), vec![8080])]);
    assert_eq!(rule("mesh-proxy").loopback.clone().expect("lo").bind, Some(vec![15001, 15006]));
    assert_eq!(rule("storefront").loopback.clone().expect("lo").bind, Some(vec![8080]));
    // The runtime joining the pod's namespaces for `podman exec` is not the workload changing
    // namespaces; nothing was flagged.
    for r in &spec.containers {
        assert_eq!(r.namespace_changes, crate::policy::model::Permission::Deny, "{:?}", r.name);
    }
    assert!(s[0].flagged.is_empty(), "{:?}", s[0].flagged);
}
