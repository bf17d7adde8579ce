//! JSON-lines export: one event per line in the canonical proto3 JSON form, written by its own
//! thread from a hub subscription, with size-based rotation that keeps N old files
//! (`events.json.1` is the newest of them).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use super::{
    filter::EventFilter,
    hub::{Hub, Receiver},
};
use crate::{event::Shared, stats::Stage};

#[derive(Clone, Debug)]
pub struct JsonlConfig {
    pub path: PathBuf,
    /// Rotate when the file reaches this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept beside the live one.
    pub keep: u32,
    pub queue: usize,
    /// Policy alerts and loss reports only.
    pub alerts_only: bool,
}

/// What `sidewall status` shows of the exporter.
#[derive(Default)]
pub struct Health {
    pub written: AtomicU64,
    pub failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// Subscribes to the hub and starts the writer thread.
pub fn start(hub: &Hub, cfg: JsonlConfig) -> io::Result<Arc<Health>> {
    let writer = Writer::open(cfg.clone())?;
    let filter = if cfg.alerts_only { EventFilter::alerts() } else { EventFilter::default() };
    let (_sub, rx) = hub.subscribe("export_file", Stage::ExportFile, filter, cfg.queue);
    let health = Arc::new(Health::default());
    let h = health.clone();
    std::thread::Builder::new().name("export-file".into()).spawn(move || run(writer, rx, &h))?;
    Ok(health)
}

fn run(mut w: Writer, mut rx: Receiver, health: &Health) {
    // A runtime of this thread's own to wait on the two queues (alerts first).
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "export file: no runtime to wait on the hub");
            return;
        }
    };
    while let Some(ev) = rt.block_on(rx.recv()) {
        let mut batch = Some(ev);
        // Write what is queued, then flush once: few syscalls under load, low latency idle.
        while let Some(ev) = batch.take().or_else(|| rx.try_recv().ok()) {
            record(health, w.write(&ev), 1);
        }
        record(health, w.flush(), 0);
    }
    record(health, w.flush(), 0);
}

fn record(health: &Health, r: io::Result<()>, n: u64) {
    match r {
        Ok(()) => {
            health.written.fetch_add(n, Relaxed);
        }
        Err(e) => {
            health.failed.fetch_add(n, Relaxed);
            tracing::warn!(error = %e, "export file write failed");
            *health.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
    }
}

pub struct Writer {
    cfg: JsonlConfig,
    out: BufWriter<File>,
    size: u64,
    line: Vec<u8>,
}

impl Writer {
    pub fn open(cfg: JsonlConfig) -> io::Result<Self> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&cfg.path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            cfg,
            out: BufWriter::with_capacity(256 * 1024, file),
            size,
            line: Vec::with_capacity(4096),
        })
    }

    pub fn write(&mut self, ev: &Shared) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &**ev)?;
        self.line.push(b'\n');
        if self.size > 0 && self.size + self.line.len() as u64 > self.cfg.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(&self.line)?;
        self.size += self.line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// path.N is dropped, path.i becomes path.i+1, path becomes path.1.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let keep = self.cfg.keep;
        if keep == 0 {
            self.out = BufWriter::with_capacity(256 * 1024, File::create(&self.cfg.path)?);
        } else {
            remove_if_exists(&numbered(&self.cfg.path, keep))?;
            for i in (1..keep).rev() {
                rename_if_exists(&numbered(&self.cfg.path, i), &numbered(&self.cfg.path, i + 1))?;
            }
            fs::rename(&self.cfg.path, numbered(&self.cfg.path, 1))?;
            let file = OpenOptions::new().create(true).append(true).open(&self.cfg.path)?;
            self.out = BufWriter::with_capacity(256 * 1024, file);
        }
        self.size = 0;
        Ok(())
    }
}

fn numbered(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidewall_proto::v1::{self as pb, get_events_response::Event};

    fn ev(pid: u32) -> Shared {
        Arc::new(pb::GetEventsResponse {
            event: Some(Event::ProcessExec(pb::ProcessExec {
                process: Some(pb::Process {
                    pid,
                    binary: "/bin/true".into(),
                    cgroup_id: 1 << 40,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            node_name: "n1".into(),
            time: Some(sidewall_proto::Timestamp { seconds: 1_800_000_000, nanos: 5 }),
        })
    }

    fn read_pids(p: &Path) -> Vec<u32> {
        fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let e: pb::GetEventsResponse = serde_json::from_str(l).expect("line parses back");
                crate::event::subject(&e).expect("process").pid
            })
            .collect()
    }

    #[test]
    fn lines_are_canonical_proto_json() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("events.json");
        let mut w = Writer::open(JsonlConfig {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 2,
            queue: 8,
            alerts_only: false,
        })
        .expect("open");
        w.write(&ev(42)).expect("write");
        w.flush().expect("flush");
        let line = fs::read_to_string(&path).expect("read");
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("json");
        assert_eq!(v["node_name"], "n1");
        assert_eq!(v["time"], "2027-01-15T08:00:00.000000005Z");
        // Proto field names, 64-bit integers as strings, as the proto3 JSON mapping says.
        assert_eq!(v["process_exec"]["process"]["pid"], 42);
        assert_eq!(v["process_exec"]["process"]["cgroup_id"], (1u64 << 40).to_string());
    }

    #[test]
    fn rotation_keeps_n_files_newest_first() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("events.json");
        let one_line = serde_json::to_vec(&*ev(1)).expect("json").len() as u64 + 1;
        let cfg = JsonlConfig {
            path: path.clone(),
            max_bytes: one_line * 2,
            keep: 2,
            queue: 8,
            alerts_only: false,
        };
        let mut w = Writer::open(cfg).expect("open");
        for pid in 1..=7 {
            w.write(&ev(pid)).expect("write");
        }
        w.flush().expect("flush");
        assert_eq!(read_pids(&path), [7]);
        assert_eq!(read_pids(&numbered(&path, 1)), [5, 6]);
        assert_eq!(read_pids(&numbered(&path, 2)), [3, 4]);
        assert!(!numbered(&path, 3).exists(), "only `keep` rotated files");
    }
}
