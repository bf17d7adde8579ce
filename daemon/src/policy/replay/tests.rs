//! Replays through the daemon's engine: a suggested policy in enforce mode against what it
//! was derived from (nothing fires but what is flagged) and against attacks (each caught,
//! with the action the daemon would take).

use super::*;
use crate::policy::{parse::parse, suggest};

const OBSERVED: &str = include_str!("../suggest/observed.jsonl");
const ATTACKS: &str = include_str!("attacks.jsonl");

fn suggested_web() -> Policy {
    let mut o = suggest::Observer::new();
    for l in OBSERVED.lines() {
        o.observe(&parse_event(l).expect("event"));
    }
    let s = o.suggest(&suggest::Filter::default());
    parse(&s.iter().find(|s| s.name == "web").expect("web").document, "web").expect("valid")
}

fn replay(policy: Policy, enforce: bool, lines: &str) -> Report {
    let mut r = Replay::new(vec![policy], enforce);
    r.judge_lines(lines.as_bytes(), "events").expect("replays");
    r.report()
}

#[test]
fn the_observed_behaviour_fires_only_what_was_flagged() {
    let report = replay(suggested_web(), true, OBSERVED);
    let fired: Vec<(&str, &str, &str)> =
        report.fired.keys().map(|k| (k.container.as_str(), k.rule.as_str(), k.action.as_str())).collect();
    assert_eq!(
        fired,
        [("shop/web-6d5f9c7b8-aaaaa:proxy", "namespace-transition", "killed")],
        "{}",
        report.render()
    );
    assert_eq!(report.events, 18);
}

#[test]
fn attacks_are_caught_with_the_daemons_action() {
    let report = replay(suggested_web(), true, ATTACKS);
    let fired: Vec<(&str, &str, &str, u64)> = report
        .fired
        .iter()
        .map(|(k, f)| (k.container.as_str(), k.rule.as_str(), k.action.as_str(), f.count))
        .collect();
    assert_eq!(
        fired,
        [
            ("shop/web-6d5f9c7b8-aaaaa:app", "egress", "blocked", 1),
            ("shop/web-6d5f9c7b8-aaaaa:proxy", "loopback-egress", "blocked", 1),
            ("shop/web-6d5f9c7b8-aaaaa:proxy", "port-squatting", "blocked", 1),
            ("shop/web-6d5f9c7b8-bbbbb:proxy", "process-access", "killed", 1),
        ],
        "{}",
        report.render()
    );
    // The policy's own mode: monitor reports what enforce would do.
    let monitor = replay(suggested_web(), false, ATTACKS);
    assert!(monitor.fired.keys().all(|k| k.action.starts_with("would_")), "{}", monitor.render());
    assert!(monitor.fires());
}

#[test]
fn a_line_that_is_not_an_event_is_named() {
    let mut r = Replay::new(vec![suggested_web()], false);
    let err = r.judge_lines("\n{\"nope\":1}\n".as_bytes(), "rec.jsonl").expect_err("refused");
    assert!(err.to_string().starts_with("rec.jsonl: line 2: not an event"), "{err}");
}

#[test]
fn a_recorded_pod_replayed_against_its_suggestion_fires_only_the_attacks() {
    const RECORDED: &str = include_str!("../suggest/benign-pod.jsonl");
    let mut o = suggest::Observer::new();
    for l in RECORDED.lines() {
        o.observe(&parse_event(l).expect("event"));
    }
    let doc = o.suggest(&suggest::Filter::default()).remove(0).document;
    let report = replay(parse(&doc, "suggested").expect("valid"), true, RECORDED);
    let fired: Vec<(&str, &str)> =
        report.fired.keys().map(|k| (k.rule.as_str(), k.action.as_str())).collect();
    assert_eq!(
        fired,
        [("loopback-egress", "blocked"), ("port-squatting", "blocked"), ("egress", "blocked")],
        "{}",
        report.render()
    );
}
