//! The policies in force: the built-in default, files of `--policy-dir` (reloaded when they
//! change), and those added over the API. A document that fails validation changes nothing:
//! the previous version stays in force.

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
    model::Mode,
    parse::{Policy, PolicyError, parse},
};

pub const BUILTIN_YAML: &str = include_str!("builtin.yaml");
const BUILTIN: &str = "builtin";

#[derive(Clone)]
struct Entry {
    policy: Policy,
    source: String,
}

/// Shared between the API (writes) and the pipeline (reads a snapshot when the generation
/// moves, so events never wait on a lock).
#[derive(Default)]
pub struct PolicyStore {
    entries: RwLock<BTreeMap<String, Entry>>,
    generation: AtomicU64,
}

impl PolicyStore {
    pub fn with_builtin() -> Arc<Self> {
        let store = Arc::new(Self::default());
        // The built-in policy is part of the binary and covered by tests; it always parses.
        if let Ok(p) = parse(BUILTIN_YAML, BUILTIN) {
            store.put(p, BUILTIN.into());
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

    /// Adds or replaces a policy from the API.
    pub fn add_document(&self, text: &str) -> Result<String, PolicyError> {
        let p = parse(text, "api")?;
        let key = p.key();
        self.put(p, "api".into());
        Ok(key)
    }

    pub fn remove(&self, name: &str) -> bool {
        let key = full_name(name);
        let removed = self.write().remove(&key).is_some();
        if removed {
            self.bump();
        }
        removed
    }

    pub fn set_mode(&self, name: &str, mode: Mode) -> bool {
        let key = full_name(name);
        let mut entries = self.write();
        let Some(e) = entries.get_mut(&key) else { return false };
        e.policy.spec.mode = mode;
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
            })
            .collect()
    }

    /// Replaces every policy that came from `source` with `policies`.
    pub fn replace_source(&self, source: &str, policies: Vec<Policy>) {
        let mut entries = self.write();
        entries.retain(|_, e| e.source != source);
        for p in policies {
            entries.insert(p.key(), Entry { policy: p, source: source.into() });
        }
        drop(entries);
        self.bump();
    }

    fn put(&self, p: Policy, source: String) {
        self.write().insert(p.key(), Entry { policy: p, source });
        self.bump();
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Relaxed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
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
        store.replace_source(&source_of(&gone), Vec::new());
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
                store.replace_source(&source_of(&path), policies);
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
    use super::*;

    fn doc(name: &str, port: &str) -> String {
        format!(
            "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: {name}\nspec:\n  containers:\n    - name: proxy\n      loopback:\n        bind: [{port}]\n"
        )
    }

    #[test]
    fn builtin_parses_and_comes_last() {
        let s = PolicyStore::with_builtin();
        s.add_document(&doc("a", "1")).expect("valid");
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
        assert_eq!(s.add_document(&doc("p", "1")).expect("ok"), "default/p");
        assert!(s.set_mode("p", Mode::Enforce));
        assert_eq!(s.list()[0].mode, "enforce");
        assert!(!s.set_mode("nope", Mode::Enforce));
        assert!(s.remove("default/p"));
        assert!(!s.remove("p"));
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
}
