//! getevents flags -> the GetEventsRequest filters.
//!
//! Allow flags form one filter: every kind of flag given must match (AND), and repeated values
//! of one flag are alternatives (OR). Each kind of exclude flag is its own deny filter, so that
//! `--exclude-binary X --exclude-event exit` drops both X's events and all exits, rather than
//! only the exits of X (which is what one deny filter, ANDing its fields, would mean).

use sidewall_proto::v1::{EventType, Filter, GetEventsRequest};

#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "Filters (different flags must all match; repeat a flag for alternatives)")]
pub struct FilterArgs {
    /// Only events of this kind: exec, exit, lost, ... or PROCESS_EXEC, ...
    #[arg(long = "event", value_name = "KIND", value_parser = parse_event_type, value_delimiter = ',')]
    events: Vec<EventType>,

    /// Only pods in this Kubernetes namespace
    #[arg(long, value_name = "NS")]
    namespace: Vec<String>,

    /// Only pods whose whole name matches this regular expression
    #[arg(long, value_name = "REGEX")]
    pod: Vec<String>,

    /// Only containers with this name, or whose id starts with this
    #[arg(long, value_name = "NAME")]
    container: Vec<String>,

    /// Only binaries whose whole path matches this regular expression
    #[arg(long, value_name = "REGEX")]
    binary: Vec<String>,

    /// Only this process id
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pid: Vec<u32>,

    /// Only containers of this role: app, sidecar, init, host
    #[arg(long, value_name = "ROLE")]
    role: Vec<String>,

    /// Drop binaries whose whole path matches this regular expression
    #[arg(long, value_name = "REGEX", help_heading = "Exclusions (each one drops events on its own)")]
    exclude_binary: Vec<String>,

    /// Drop events of this kind
    #[arg(long, value_name = "KIND", value_parser = parse_event_type, value_delimiter = ',', help_heading = "Exclusions (each one drops events on its own)")]
    exclude_event: Vec<EventType>,

    /// Drop events of this process id
    #[arg(
        long,
        value_name = "PID",
        value_delimiter = ',',
        help_heading = "Exclusions (each one drops events on its own)"
    )]
    exclude_pid: Vec<u32>,
}

impl FilterArgs {
    pub fn request(&self) -> GetEventsRequest {
        let allow = Filter {
            event_set: event_set(&self.events),
            namespace: self.namespace.clone(),
            pod_regex: self.pod.clone(),
            container: self.container.clone(),
            binary_regex: self.binary.clone(),
            pid: self.pid.clone(),
            role: self.role.clone(),
        };
        let deny = [
            Filter { binary_regex: self.exclude_binary.clone(), ..Filter::default() },
            Filter { event_set: event_set(&self.exclude_event), ..Filter::default() },
            Filter { pid: self.exclude_pid.clone(), ..Filter::default() },
        ];
        GetEventsRequest { allow_list: non_empty([allow]), deny_list: non_empty(deny) }
    }
}

fn event_set(kinds: &[EventType]) -> Vec<i32> {
    kinds.iter().map(|&k| k as i32).collect()
}

/// An empty filter would match every event: as a deny filter it would drop them all.
fn non_empty<const N: usize>(filters: [Filter; N]) -> Vec<Filter> {
    filters.into_iter().filter(|f| *f != Filter::default()).collect()
}

/// Accepts the proto name in any case (`PROCESS_EXEC`, `process_exec`, `process-exec`) and the
/// short words the compact output prints (`exec`, `exit`, `lost`, `alert`).
pub fn parse_event_type(s: &str) -> Result<EventType, String> {
    let name = s.trim().to_ascii_uppercase().replace('-', "_");
    let candidates =
        [name.clone(), format!("PROCESS_{name}"), format!("{name}_EVENTS"), format!("POLICY_{name}")];
    candidates
        .iter()
        .filter_map(|c| EventType::from_str_name(c))
        .find(|&t| t != EventType::Unspecified)
        .ok_or_else(|| format!("expected one of: {}", known_kinds().join(", ")))
}

fn known_kinds() -> Vec<String> {
    (1..64)
        .filter_map(|i| EventType::try_from(i).ok())
        .map(|t| t.as_str_name().to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        filters: FilterArgs,
    }

    fn request(args: &[&str]) -> GetEventsRequest {
        let argv = std::iter::once("getevents").chain(args.iter().copied());
        match Cmd::try_parse_from(argv) {
            Ok(cmd) => cmd.filters.request(),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn no_flags_no_filters() {
        assert_eq!(request(&[]), GetEventsRequest::default());
    }

    #[test]
    fn allow_flags_make_one_filter() {
        let req = request(&[
            "--event",
            "exec",
            "--event",
            "PROCESS_EXIT",
            "--namespace",
            "default",
            "--pod",
            "web-.*",
            "--container",
            "app",
            "--binary",
            "/usr/bin/.*",
            "--pid",
            "1,2",
            "--role",
            "sidecar",
        ]);
        let want = Filter {
            event_set: vec![EventType::ProcessExec as i32, EventType::ProcessExit as i32],
            namespace: vec!["default".into()],
            pod_regex: vec!["web-.*".into()],
            container: vec!["app".into()],
            binary_regex: vec!["/usr/bin/.*".into()],
            pid: vec![1, 2],
            role: vec!["sidecar".into()],
        };
        assert_eq!(req.allow_list, vec![want]);
        assert!(req.deny_list.is_empty());
    }

    #[test]
    fn each_exclusion_is_its_own_deny_filter() {
        let req = request(&[
            "--exclude-binary",
            "/bin/sh",
            "--exclude-event",
            "lost",
            "--exclude-pid",
            "7",
            "--exclude-binary",
            "/bin/ls",
        ]);
        assert!(req.allow_list.is_empty());
        assert_eq!(
            req.deny_list,
            vec![
                Filter { binary_regex: vec!["/bin/sh".into(), "/bin/ls".into()], ..Filter::default() },
                Filter { event_set: vec![EventType::LostEvents as i32], ..Filter::default() },
                Filter { pid: vec![7], ..Filter::default() },
            ]
        );
    }

    #[test]
    fn regexes_are_not_split_on_commas() {
        let req = request(&["--binary", "a{1,3}"]);
        assert_eq!(req.allow_list[0].binary_regex, vec!["a{1,3}".to_string()]);
    }

    #[test]
    fn event_kind_spellings() {
        for (s, want) in [
            ("process_exec", EventType::ProcessExec),
            ("PROCESS_EXEC", EventType::ProcessExec),
            ("process-exit", EventType::ProcessExit),
            ("exit", EventType::ProcessExit),
            ("Connect", EventType::ProcessConnect),
            ("lost", EventType::LostEvents),
            ("lost_events", EventType::LostEvents),
            ("alert", EventType::PolicyAlert),
        ] {
            assert_eq!(parse_event_type(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_unknown_kinds() {
        for s in ["", "bogus", "EVENT_TYPE_UNSPECIFIED", "unspecified"] {
            let err = parse_event_type(s).expect_err(s);
            assert!(err.contains("process_exec"), "{err}");
            assert!(!err.contains("unspecified"), "{err}");
        }
    }

    #[test]
    fn bad_pid_is_a_usage_error() {
        let argv = ["getevents", "--pid", "abc"];
        assert!(Cmd::try_parse_from(argv).is_err());
    }
}
