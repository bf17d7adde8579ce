//! The policies in force: the built-in default, files of `--policy-dir` (reloaded when they
//! change), and those added over the API. A document that fails validation changes nothing:
//! the previous version stays in force. Every change is described, with who made it, to the
//! audit sink (`audit`), in the order the changes are applied.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use sidewall_proto::v1 as pb;

use super::{
    audit::{self, AuditSink},
    model::Mode,
    parse::{Policy, PolicyError, parse},
};

pub const BUILTIN_YAML: &str = include_str!("builtin.yaml");
const BUILTIN: &str = "builtin";

#[derive(Clone)]
struct Entry {
    policy: Policy,
    source: String,
    version: pb::PolicyVersion,
}

impl Entry {
    fn new(policy: Policy, source: String) -> Self {
        let version = audit::version(&policy);
        Self { policy, source, version }
    }
}

type Entries = BTreeMap<String, Entry>;

/// Shared between the API (writes) and the pipeline (reads a snapshot when the generation
/// moves, so events never wait on a lock).
#[derive(Default)]
pub struct PolicyStore {
    entries: RwLock<Entries>,
    generation: AtomicU64,
    audit: Option<AuditSink>,
}

impl PolicyStore {
    /// With the built-in policy, unaudited.
    pub fn with_builtin() -> Arc<Self> {
        Self::build(None)
    }

    /// With the built-in policy; every change, the built-in's load included, goes to `sink`.
    pub fn audited(sink: AuditSink) -> Arc<Self> {
        Self::build(Some(sink))
    }

    fn build(audit: Option<AuditSink>) -> Arc<Self> {
        let store = Arc::new(Self { audit, ..Self::default() });
        // The built-in policy is part of the binary and covered by tests; it always parses.
        if let Ok(p) = parse(BUILTIN_YAML, BUILTIN) {
            store.put(p, BUILTIN, &audit::builtin());
        }
        store
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Policies in evaluation order: specific ones by name, the built-in default last.
    pub fn snapshot(&self) -> Vec<Policy> {
        let entries = self.read();
        let (builtin, others): (Vec<_>, Vec<_>) = entries.values().partition(|e| e.source == BUILTIN);
        others.into_iter().chain(builtin).map(|e| e.policy.clone()).collect()
    }

    /// Adds or replaces a policy from the API, on behalf of `actor`.
    pub fn add_document(&self, text: &str, actor: &pb::PolicyActor) -> Result<String, PolicyError> {
        let p = parse(text, "api")?;
        let key = p.key();
        self.put(p, "api", actor);
        Ok(key)
    }

    pub fn remove(&self, name: &str, actor: &pb::PolicyActor) -> bool {
        let key = full_name(name);
        let mut entries = self.write();
        let Some(before) = entries.remove(&key) else { return false };
        self.record(&key, Some(&before), None, actor);
        drop(entries);
        self.bump();
        true
    }

    pub fn set_mode(&self, name: &str, mode: Mode, actor: &pb::PolicyActor) -> bool {
        let key = full_name(name);
        let mut entries = self.write();
        let Some(e) = entries.get_mut(&key) else { return false };
        let mut policy = e.policy.clone();
        policy.spec.mode = mode;
        let after = Entry::new(policy, e.source.clone());
        let before = std::mem::replace(e, after.clone());
        self.record(&key, Some(&before), Some(&after), actor);
        drop(entries);
        self.bump();
        true
    }

    pub fn list(&self) -> Vec<pb::PolicyInfo> {
        self.read()
            .iter()
            .map(|(k, e)| pb::PolicyInfo {
                name: k.clone(),
                mode: mode_name(e.policy.spec.mode).into(),
                source: e.source.clone(),
                document: e.policy.to_document(),
                hash: e.version.hash.clone(),
            })
            .collect()
    }

    /// Replaces every policy that came from `source` with `policies`; `actor` names who
    /// changed the policy of a key.
    pub fn replace_source(
        &self,
        source: &str,
        policies: Vec<Policy>,
        actor: &dyn Fn(&str) -> pb::PolicyActor,
    ) {
        let mut entries = self.write();
        let mut before: BTreeMap<String, Option<Entry>> = BTreeMap::new();
        let old: Vec<String> =
            entries.iter().filter(|(_, e)| e.source == source).map(|(k, _)| k.clone()).collect();
        for k in old {
            let e = entries.remove(&k);
            before.insert(k, e);
        }
        for p in policies {
            let key = p.key();
            let previous = entries.insert(key.clone(), Entry::new(p, source.into()));
            before.entry(key).or_insert(previous);
        }
        for (key, was) in &before {
            self.record(key, was.as_ref(), entries.get(key), &actor(key));
        }
        drop(entries);
        self.bump();
    }

    fn put(&self, p: Policy, source: &str, actor: &pb::PolicyActor) {
        let key = p.key();
        let mut entries = self.write();
        let after = Entry::new(p, source.into());
        let before = entries.insert(key.clone(), after.clone());
        self.record(&key, before.as_ref(), Some(&after), actor);
        drop(entries);
        self.bump();
    }

    /// Describes a change to the audit sink. Called with the write lock held, so that the
    /// descriptions are in the order of the changes.
    fn record(&self, key: &str, before: Option<&Entry>, after: Option<&Entry>, actor: &pb::PolicyActor) {
        let Some(sink) = &self.audit else { return };
        let before = before.map(|e| (&e.policy, &e.version));
        let after = after.map(|e| (&e.policy, &e.version));
        if let Some(change) = audit::diff(key, before, after, actor) {
            tracing::info!(
                policy = %change.policy, change = %change.change, source = %change.source,
                actor = %audit::describe(actor),
                "policy changed"
            );
            sink.record(change);
        }
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Relaxed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Monitor => "monitor",
        Mode::Enforce => "enforce",
    }
}

/// "name" means "default/name".
fn full_name(name: &str) -> String {
    if name.contains('/') { name.to_string() } else { format!("default/{name}") }
}

/// Every document of a file (YAML allows several, separated by `---` lines), with errors at
/// the file's line numbers.
pub fn parse_file(text: &str, origin: &str) -> Result<Vec<Policy>, PolicyError> {
    sidewall_proto::documents::documents(text).iter().map(|doc| parse(doc, origin)).collect()
}

/// Watches `dir` for policy files (*.yaml, *.yml, *.json), every `every`, forever.
pub async fn watch_dir(store: Arc<PolicyStore>, dir: PathBuf, every: Duration) {
    let mut seen: HashMap<PathBuf, (SystemTime, u64)> = HashMap::new();
    loop {
        reload_dir(&store, &dir, &mut seen);
        tokio::time::sleep(every).await;
    }
}

/// One pass: files that changed are parsed; a file that fails keeps its previous policies.
pub fn reload_dir(store: &PolicyStore, dir: &Path, seen: &mut HashMap<PathBuf, (SystemTime, u64)>) {
    let files = policy_files(dir);
    for gone in seen.keys().filter(|p| !files.contains(p)).cloned().collect::<Vec<_>>() {
        seen.remove(&gone);
        store.replace_source(&source_of(&gone), Vec::new(), &|_| audit::file(&gone));
        tracing::info!(file = %gone.display(), "policy file removed");
    }
    for path in files {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
        if seen.get(&path) == Some(&stamp) {
            continue;
        }
        seen.insert(path.clone(), stamp);
        let origin = path.display().to_string();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| PolicyError { origin: origin.clone(), field: "file".into(), reason: e.to_string() })
            .and_then(|text| parse_file(&text, &origin));
        match parsed {
            Ok(policies) => {
                tracing::info!(file = %origin, count = policies.len(), "policies loaded");
                store.replace_source(&source_of(&path), policies, &|_| audit::file(&path));
            }
            Err(e) => tracing::error!("policy refused, the previous version stays in force: {e}"),
        }
    }
}

fn source_of(path: &Path) -> String {
    format!("file:{}", path.display())
}

fn policy_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sidewall_proto::v1::policy_actor::Actor;

    use super::*;
    use crate::{policy::audit::Change, stats::Stats};

    fn doc(name: &str, port: &str) -> String {
        format!(
            "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: {name}\nspec:\n  containers:\n    - name: proxy\n      loopback:\n        bind: [{port}]\n"
        )
    }

    fn api() -> pb::PolicyActor {
        pb::PolicyActor {
            actor: Some(Actor::Unix(pb::UnixPeer { uid: 0, role: "admin".into(), ..Default::default() })),
        }
    }

    fn audited() -> (Arc<PolicyStore>, tokio::sync::mpsc::Receiver<Change>) {
        let (sink, rx) = AuditSink::channel(64, Arc::new(Stats::default()));
        (PolicyStore::audited(sink), rx)
    }

    /// (policy, change, source) of every change described since the last call.
    fn changes(rx: &mut tokio::sync::mpsc::Receiver<Change>) -> Vec<(String, String, String)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| (c.event.policy, c.event.change, c.event.source))
            .collect()
    }

    fn change(policy: &str, change: &str, source: &str) -> (String, String, String) {
        (policy.into(), change.into(), source.into())
    }

    #[test]
    fn builtin_parses_and_comes_last() {
        let s = PolicyStore::with_builtin();
        s.add_document(&doc("a", "1"), &api()).expect("valid");
        let snap = s.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].key(), "default/a");
        assert_eq!(snap[1].name, "sidecar-zero-trust");
    }

    #[test]
    fn a_bad_file_keeps_the_previous_version() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("p.yaml");
        let s = PolicyStore::default();
        let mut seen = HashMap::new();
        std::fs::write(&file, doc("p", "8080")).expect("write");
        reload_dir(&s, dir.path(), &mut seen);
        assert_eq!(s.list().len(), 1);
        let g = s.generation();
        // Broken, and with a different size so the change is noticed.
        std::fs::write(&file, doc("p", "http-port")).expect("write");
        reload_dir(&s, dir.path(), &mut seen);
        assert_eq!(s.generation(), g, "nothing changed");
        assert!(s.list()[0].document.contains("8080"), "the previous version is in force");
        std::fs::remove_file(&file).expect("rm");
        reload_dir(&s, dir.path(), &mut seen);
        assert!(s.list().is_empty());
    }

    #[test]
    fn modes_and_removal_by_short_name() {
        let s = PolicyStore::default();
        assert_eq!(s.add_document(&doc("p", "1"), &api()).expect("ok"), "default/p");
        assert!(s.set_mode("p", Mode::Enforce, &api()));
        assert_eq!(s.list()[0].mode, "enforce");
        assert!(!s.set_mode("nope", Mode::Enforce, &api()));
        assert!(s.remove("default/p", &api()));
        assert!(!s.remove("p", &api()));
    }

    #[test]
    fn several_documents_in_one_file() {
        let text = format!("{}---\n{}", doc("a", "1"), doc("b", "2"));
        assert_eq!(parse_file(&text, "f").expect("two").len(), 2);
        // An error in the second document names the line of the file.
        let text = format!("{}---\n{}", doc("a", "1"), doc("b", "x"));
        let e = parse_file(&text, "f").unwrap_err();
        assert!(e.reason.contains("line 19"), "{e}");
    }

    #[test]
    fn every_api_change_is_described_once_with_its_actor() {
        let (s, mut rx) = audited();
        assert_eq!(changes(&mut rx), [change("sidewall-system/sidecar-zero-trust", "added", "builtin")]);
        s.add_document(&doc("p", "1"), &api()).expect("ok");
        s.add_document(&doc("p", "1"), &api()).expect("same again");
        s.add_document(&doc("p", "2"), &api()).expect("ok");
        assert!(s.set_mode("p", Mode::Enforce, &api()));
        assert!(s.set_mode("p", Mode::Enforce, &api()), "already enforced: no change");
        assert!(s.remove("p", &api()));
        assert!(!s.remove("p", &api()));
        assert_eq!(
            changes(&mut rx),
            [
                change("default/p", "added", "api"),
                change("default/p", "replaced", "api"),
                change("default/p", "mode_changed", "api"),
                change("default/p", "deleted", "api"),
            ]
        );
        let info = s.list().into_iter().find(|p| p.source == "builtin").expect("builtin");
        assert_eq!(info.hash, audit::hash(&info.document));
    }

    #[test]
    fn a_file_change_describes_only_the_policies_that_changed() {
        let (s, mut rx) = audited();
        changes(&mut rx);
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("p.yaml");
        let mut seen = HashMap::new();
        std::fs::write(&file, format!("{}---\n{}", doc("a", "1"), doc("b", "2"))).expect("write");
        reload_dir(&s, dir.path(), &mut seen);
        assert_eq!(
            changes(&mut rx),
            [change("default/a", "added", "file"), change("default/b", "added", "file")]
        );
        // b changes, a does not; c is new. The file grows, so the change is seen at once.
        std::fs::write(&file, format!("{}---\n{}---\n{}", doc("a", "1"), doc("b", "22"), doc("c", "3")))
            .expect("write");
        reload_dir(&s, dir.path(), &mut seen);
        let got: Vec<Change> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got.iter().map(|c| (c.event.policy.as_str(), c.event.change.as_str())).collect::<Vec<_>>(),
            [("default/b", "replaced"), ("default/c", "added")]
        );
        let actor = got[0].event.actor.as_ref().and_then(|a| a.actor.clone());
        assert_eq!(actor, Some(Actor::File(file.display().to_string())));
        let (before, after) = (got[0].event.before.clone(), got[0].event.after.clone());
        assert_ne!(before.map(|v| v.hash), after.map(|v| v.hash));
        std::fs::remove_file(&file).expect("rm");
        reload_dir(&s, dir.path(), &mut seen);
        assert_eq!(
            changes(&mut rx),
            [
                change("default/a", "deleted", "file"),
                change("default/b", "deleted", "file"),
                change("default/c", "deleted", "file")
            ]
        );
    }
}
