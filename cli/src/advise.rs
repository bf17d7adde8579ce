//! `sidewall policy suggest`, `policy test` and `policy diff`: a policy from what a pod did,
//! recorded events judged against a policy, and two policies compared. Suggest and test run
//! the daemon's own code (`sidewalld::policy`): offline on a JSON-lines export, or, for
//! suggest, on the daemon's observations over the API.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::ValueEnum;
use sidewall_proto::v1::{ListPoliciesRequest, SuggestPolicyRequest, SuggestPolicyResponse};
use sidewalld::policy::{
    diff,
    parse::Policy,
    replay::{self, Replay},
    store, suggest,
};

use crate::errors;

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum SuggestFormat {
    /// The documents, `---` between them, ready for `kubectl apply -f -` or `policy add -`
    #[default]
    Yaml,
    /// The SuggestPolicyResponse (each document, its pods, what was flagged)
    Json,
}

#[derive(clap::Args)]
pub struct SuggestArgs {
    /// Only pods in this namespace
    #[arg(long)]
    namespace: Option<String>,
    /// Only workloads with a pod whose name matches this regular expression
    #[arg(long, conflicts_with = "selector")]
    pod: Option<String>,
    /// Only pods with these labels: app=web[,tier=front]
    #[arg(long, value_name = "K=V,...")]
    selector: Option<String>,
    /// Only what was seen since: an RFC 3339 time, or a duration back from now (30s, 15m,
    /// 2h, 1d); default: since the daemon (or the recording) started
    #[arg(long)]
    since: Option<String>,
    /// Learn from this JSON-lines export instead of asking the daemon
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value_t)]
    output: SuggestFormat,
}

pub async fn suggest(server: &crate::Server, a: SuggestArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let req = SuggestPolicyRequest {
        namespace: a.namespace.clone().unwrap_or_default(),
        pod_regex: a.pod.clone().unwrap_or_default(),
        selector: selector(a.selector.as_deref())?.into_iter().collect(),
        since: a.since.as_deref().map(since).transpose()?,
    };
    let response = match &a.events {
        Some(file) => offline(&req, file)?,
        None => crate::client(server).await?.suggest_policy(req).await?.into_inner(),
    };
    let text = match a.output {
        SuggestFormat::Json => serde_json::to_string_pretty(&response)?,
        SuggestFormat::Yaml if response.policies.is_empty() => {
            anyhow::bail!("nothing seen of the pods asked for: no policy to suggest")
        }
        SuggestFormat::Yaml => {
            response.policies.iter().map(|p| p.document.as_str()).collect::<Vec<_>>().join("---\n")
        }
    };
    errors::stdout(writeln!(out, "{}", text.trim_end()).and_then(|()| out.flush()))
}

/// The daemon's suggestion code, fed from a recording.
fn offline(req: &SuggestPolicyRequest, file: &Path) -> anyhow::Result<SuggestPolicyResponse> {
    let filter = suggest::Filter::from_request(req).map_err(anyhow::Error::msg)?;
    let mut observer = suggest::Observer::new();
    let origin = file.display().to_string();
    for (i, line) in open(file)?.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {origin}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let ev = replay::parse_event(&line)
            .map_err(|e| anyhow::anyhow!("{origin}: line {}: not an event: {e}", i + 1))?;
        observer.observe(&ev);
    }
    let policies = observer.suggest(&filter).iter().map(suggest::Suggestion::to_proto).collect();
    Ok(SuggestPolicyResponse { policies })
}

fn open(file: &Path) -> anyhow::Result<BufReader<File>> {
    Ok(BufReader::new(File::open(file).with_context(|| format!("cannot read {}", file.display()))?))
}

/// `k=v,k2=v2`.
fn selector(s: Option<&str>) -> anyhow::Result<BTreeMap<String, String>> {
    let Some(s) = s else { return Ok(BTreeMap::new()) };
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => anyhow::bail!("--selector: {pair:?} is not key=value"),
        })
        .collect()
}

/// An RFC 3339 time, or a duration back from now.
fn since(s: &str) -> anyhow::Result<sidewall_proto::Timestamp> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(sidewall_proto::Timestamp { seconds: t.timestamp(), nanos: 0 });
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().map_err(|_| anyhow::anyhow!("--since: {s:?} is neither a time nor a duration"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("--since: {s:?}: the unit must be s, m, h or d"),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    Ok(sidewall_proto::Timestamp { seconds: i64::try_from(now)? - secs, nanos: 0 })
}

/// Replays `events` against the policies of `policy`; prints what would fire, and says
/// whether anything does (exit status 3).
pub fn test(policy: &Path, events: &Path, enforce: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let policies = read_policies(policy)?;
    let mut r = Replay::new(policies, enforce);
    r.judge_lines(open(events)?, &events.display().to_string())?;
    let report = r.report();
    errors::stdout(write!(out, "{}", report.render()).and_then(|()| out.flush()))?;
    if report.fires() { Err(errors::WouldFire.into()) } else { Ok(()) }
}

fn read_policies(file: &Path) -> anyhow::Result<Vec<Policy>> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {name}"))?;
    let policies = store::parse_file(&text, &name)?;
    anyhow::ensure!(!policies.is_empty(), "{name} holds no policy document");
    Ok(policies)
}

/// One side of a diff: a file, or else the name of a policy loaded in the daemon.
async fn side(server: &crate::Server, what: &str) -> anyhow::Result<Policy> {
    if Path::new(what).exists() {
        let mut policies = read_policies(Path::new(what))?;
        anyhow::ensure!(policies.len() == 1, "{what}: holds {} policies; diff compares one", policies.len());
        return Ok(policies.remove(0));
    }
    let key = if what.contains('/') { what.to_string() } else { format!("default/{what}") };
    let list = crate::client(server).await?.list_policies(ListPoliciesRequest {}).await?.into_inner();
    let info = list
        .policies
        .iter()
        .find(|p| p.name == key)
        .ok_or_else(|| anyhow::anyhow!("{what}: neither a file nor a policy of the daemon"))?;
    Ok(sidewalld::policy::parse::parse(&info.document, &format!("daemon:{key}"))?)
}

/// What changes from `a` to `b`, one line per change: `+` allows more, `-` less, `~` other.
pub async fn diff(server: &crate::Server, a: &str, b: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let (pa, pb) = (side(server, a).await?, side(server, b).await?);
    let changes = diff::diff(&pa, &pb);
    let mut text = String::new();
    for c in &changes {
        text.push_str(&format!("{c}\n"));
    }
    if changes.is_empty() {
        text.push_str("no change\n");
    }
    errors::stdout(write!(out, "{text}").and_then(|()| out.flush()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_times() {
        assert_eq!(selector(Some("app=web, tier=front")).expect("ok").len(), 2);
        assert!(selector(Some("app")).is_err());
        assert_eq!(since("2026-11-20T10:00:00Z").expect("time").seconds, 1_795_168_800);
        assert!(since("15m").expect("duration").seconds > 0);
        assert!(since("15y").is_err());
    }
}
