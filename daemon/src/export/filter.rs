//! Event filters of GetEvents, compiled once per stream and evaluated per event.

use regex::RegexSet;
use sidewall_proto::v1::{self as pb, EventType};

use crate::event;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("{field}: invalid regular expression {pattern:?}: {reason}")]
    Regex { field: String, pattern: String, reason: String },
    #[error("{field}: unknown event type {value}")]
    EventType { field: String, value: i32 },
    #[error("{field}: unknown role {value:?} (expected app, sidecar, init, host or infra)")]
    Role { field: String, value: String },
}

/// Shortest container id prefix accepted, so that "a" does not match half the node.
const MIN_ID_PREFIX: usize = 6;

#[derive(Debug, Default)]
struct Compiled {
    kinds: Vec<EventType>,
    namespaces: Vec<String>,
    pods: Option<RegexSet>,
    containers: Vec<String>,
    binaries: Option<RegexSet>,
    pids: Vec<u32>,
    roles: Vec<String>,
}

#[derive(Debug, Default)]
pub struct EventFilter {
    allow: Vec<Compiled>,
    deny: Vec<Compiled>,
}

impl EventFilter {
    pub fn compile(req: &pb::GetEventsRequest) -> Result<Self, FilterError> {
        let list = |name: &str, filters: &[pb::Filter]| -> Result<Vec<Compiled>, FilterError> {
            filters.iter().enumerate().map(|(i, f)| compile_one(&format!("{name}[{i}]"), f)).collect()
        };
        Ok(Self { allow: list("allow_list", &req.allow_list)?, deny: list("deny_list", &req.deny_list)? })
    }

    /// Only events of kind `kind` (loss reports still reach the subscriber).
    pub fn only(kind: EventType) -> Self {
        Self::kinds(vec![kind])
    }

    /// Policy alerts and loss reports: what an output for the SOC carries.
    pub fn alerts() -> Self {
        Self::kinds(vec![EventType::PolicyAlert, EventType::LostEvents])
    }

    fn kinds(kinds: Vec<EventType>) -> Self {
        Self { allow: vec![Compiled { kinds, ..Default::default() }], deny: Vec::new() }
    }

    /// Allowed by any allow filter (or there are none), and by no deny filter.
    pub fn matches(&self, ev: &pb::GetEventsResponse) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|f| f.matches(ev)))
            && !self.deny.iter().any(|f| f.matches(ev))
    }
}

fn compile_one(field: &str, f: &pb::Filter) -> Result<Compiled, FilterError> {
    let kinds = f
        .event_set
        .iter()
        .map(|&v| {
            EventType::try_from(v)
                .ok()
                .filter(|k| *k != EventType::Unspecified)
                .ok_or_else(|| FilterError::EventType { field: format!("{field}.event_set"), value: v })
        })
        .collect::<Result<_, _>>()?;
    for r in &f.role {
        if !matches!(r.as_str(), "app" | "sidecar" | "init" | "host" | "infra") {
            return Err(FilterError::Role { field: format!("{field}.role"), value: r.clone() });
        }
    }
    Ok(Compiled {
        kinds,
        namespaces: f.namespace.clone(),
        pods: anchored(&format!("{field}.pod_regex"), &f.pod_regex)?,
        containers: f.container.clone(),
        binaries: anchored(&format!("{field}.binary_regex"), &f.binary_regex)?,
        pids: f.pid.clone(),
        roles: f.role.clone(),
    })
}

/// Compiles patterns that must match the whole string. Each is checked alone first so the
/// error names the one that is wrong.
fn anchored(field: &str, patterns: &[String]) -> Result<Option<RegexSet>, FilterError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let wrapped: Vec<String> = patterns.iter().map(|p| format!("^(?:{p})$")).collect();
    for (i, (p, w)) in patterns.iter().zip(&wrapped).enumerate() {
        if let Err(e) = regex::Regex::new(w) {
            return Err(FilterError::Regex {
                field: format!("{field}[{i}]"),
                pattern: p.clone(),
                reason: e.to_string().lines().last().unwrap_or_default().trim().to_string(),
            });
        }
    }
    RegexSet::new(&wrapped).map(Some).map_err(|e| FilterError::Regex {
        field: field.to_string(),
        pattern: patterns.join(", "),
        reason: e.to_string(),
    })
}

impl Compiled {
    fn matches(&self, ev: &pb::GetEventsResponse) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&event::kind(ev)) {
            return false;
        }
        let Some(p) = event::subject(ev) else {
            // Events about no process (lost_events) are selected by kind alone.
            return true;
        };
        let pod = p.pod.as_ref();
        let container = p.container.as_ref();
        let any = |v: &[String], f: &dyn Fn(&str) -> bool| v.is_empty() || v.iter().any(|x| f(x));
        any(&self.namespaces, &|ns| pod.is_some_and(|pod| pod.namespace == ns))
            && self.pods.as_ref().is_none_or(|set| pod.is_some_and(|pod| set.is_match(&pod.name)))
            && any(&self.containers, &|c| {
                container.is_some_and(|k| k.name == c || (c.len() >= MIN_ID_PREFIX && k.id.starts_with(c)))
            })
            && self.binaries.as_ref().is_none_or(|set| set.is_match(&p.binary))
            && (self.pids.is_empty() || self.pids.contains(&p.pid))
            && any(&self.roles, &|r| container.is_some_and(|k| k.role == r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidewall_proto::v1::get_events_response::Event;

    fn exec(binary: &str, pid: u32, pod: Option<(&str, &str)>, role: &str) -> pb::GetEventsResponse {
        let process = pb::Process {
            binary: binary.into(),
            pid,
            pod: pod.map(|(ns, name)| pb::Pod {
                namespace: ns.into(),
                name: name.into(),
                ..Default::default()
            }),
            container: Some(pb::Container {
                id: "abcdef0123".into(),
                name: "app".into(),
                role: role.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        pb::GetEventsResponse {
            event: Some(Event::ProcessExec(pb::ProcessExec { process: Some(process), ..Default::default() })),
            ..Default::default()
        }
    }

    fn req(allow: Vec<pb::Filter>, deny: Vec<pb::Filter>) -> pb::GetEventsRequest {
        pb::GetEventsRequest { allow_list: allow, deny_list: deny }
    }

    #[test]
    fn allow_fields_and_together_values_or_together() {
        let f = EventFilter::compile(&req(
            vec![pb::Filter {
                binary_regex: vec!["/usr/bin/.*".into(), "/bin/sh".into()],
                namespace: vec!["prod".into()],
                ..Default::default()
            }],
            vec![],
        ))
        .expect("valid");
        assert!(f.matches(&exec("/usr/bin/curl", 1, Some(("prod", "web")), "app")));
        assert!(f.matches(&exec("/bin/sh", 1, Some(("prod", "web")), "app")));
        assert!(!f.matches(&exec("/bin/shx", 1, Some(("prod", "web")), "app")), "anchored");
        assert!(!f.matches(&exec("/usr/bin/curl", 1, Some(("dev", "web")), "app")));
        assert!(!f.matches(&exec("/usr/bin/curl", 1, None, "host")));
    }

    #[test]
    fn deny_excludes_and_kinds_select() {
        let f = EventFilter::compile(&req(
            vec![pb::Filter { event_set: vec![EventType::ProcessExec as i32], ..Default::default() }],
            vec![pb::Filter { pid: vec![7], ..Default::default() }],
        ))
        .expect("valid");
        assert!(f.matches(&exec("/x", 6, None, "host")));
        assert!(!f.matches(&exec("/x", 7, None, "host")));
        let lost = pb::GetEventsResponse {
            event: Some(Event::LostEvents(pb::LostEvents::default())),
            ..Default::default()
        };
        assert!(!f.matches(&lost), "lost_events is not in the event set");
        assert!(EventFilter::default().matches(&lost));
    }

    #[test]
    fn container_name_role_and_id_prefix() {
        let by = |container: &str, role: &str| {
            EventFilter::compile(&req(
                vec![pb::Filter {
                    container: vec![container.into()],
                    role: if role.is_empty() { vec![] } else { vec![role.into()] },
                    ..Default::default()
                }],
                vec![],
            ))
            .expect("valid")
        };
        let ev = exec("/x", 1, None, "sidecar");
        assert!(by("app", "").matches(&ev));
        assert!(by("abcdef", "sidecar").matches(&ev));
        assert!(!by("abc", "").matches(&ev), "too short an id prefix");
        assert!(!by("app", "app").matches(&ev));
    }

    #[test]
    fn bad_regex_names_its_place() {
        let err = EventFilter::compile(&req(
            vec![pb::Filter { binary_regex: vec!["ok".into(), "(unclosed".into()], ..Default::default() }],
            vec![],
        ))
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("allow_list[0].binary_regex[1]: invalid regular expression \"(unclosed\""),
            "{msg}"
        );
        let err = EventFilter::compile(&req(
            vec![pb::Filter { role: vec!["boss".into()], ..Default::default() }],
            vec![],
        ))
        .unwrap_err();
        assert!(matches!(err, FilterError::Role { .. }));
    }
}
