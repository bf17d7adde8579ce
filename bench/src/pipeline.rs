//! Measurement 4: events per second from the kernel to a gRPC client and to the JSON export
//! file, the rate where loss begins, and the proof that every event that did not arrive was
//! counted as lost.
//!
//! Load: swbench `udp-flood` sends datagrams, each to a destination never used before, from a
//! network namespace of its own, so the kernel's folding of repeats never applies: each
//! datagram is exactly one ring-buffer record, and one `process_datagram` event.

use std::{
    fs,
    io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _},
    path::Path,
    process::{ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use harness::TestCgroup;
use sidewall_proto::v1::{
    EventType, Filter, GetEventsRequest, GetStatusResponse, get_events_response::Event,
};

use crate::{
    Ctx,
    daemon::Sidewalld,
    rawstream,
    report::{self, Section, Table, Target},
    sys::{self, Children},
};

/// Where the datagrams go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dest {
    /// 127.0.0.0/8: delivered on loopback, the whole UDP path (sendmmsg).
    Loopback,
    /// 10.0.0.0/8 with no route: the cgroup hook runs, then sendto fails with ENETUNREACH.
    /// Far cheaper for the generator, so it can offer the daemon a much higher rate.
    Unroutable,
}

impl Dest {
    fn arg(self) -> &'static str {
        match self {
            Dest::Loopback => "lo",
            Dest::Unroutable => "unreach",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Dest::Loopback => "loopback",
            Dest::Unroutable => "no route",
        }
    }
}

pub struct Params {
    /// Offered rates per destination kind, events per second; 0: as fast as the generator can.
    pub phases: Vec<(Dest, Vec<f64>)>,
    pub step_seconds: f64,
    pub max_count: u64,
    /// Further steps between the last loss-free rate and the first lossy one, per kind.
    pub refine: usize,
    /// How long perf samples during the profile step (0: no profile step).
    pub profile_seconds: f64,
}

/// What the client received, updated by the stream task.
#[derive(Default)]
struct Rx {
    datagrams: AtomicU64,
    other: AtomicU64,
    lost_queue: AtomicU64,
    lost_kernel_socket: AtomicU64,
    last_ns: AtomicU64,
    wrong_pid: AtomicU64,
}

#[derive(Clone, Debug)]
struct Step {
    dest: Dest,
    asked: f64,
    sent: u64,
    gen_ns: u64,
    gen_cpu: f64,
    daemon_cpu: f64,
    grpc: u64,
    grpc_ns: u64,
    export: u64,
    export_ns: u64,
    kernel_lost: u64,
    kernel_lost_socket: u64,
    queue_lost: u64,
    queue_lost_inband: u64,
    export_lost: u64,
    drain_timeout: bool,
}

impl Step {
    fn offered(&self) -> f64 {
        self.sent as f64 * 1e9 / self.gen_ns.max(1) as f64
    }
    fn grpc_rate(&self) -> f64 {
        self.grpc as f64 * 1e9 / self.grpc_ns.max(1) as f64
    }
    fn export_rate(&self) -> f64 {
        self.export as f64 * 1e9 / self.export_ns.max(1) as f64
    }
    fn delivered_rate(&self) -> f64 {
        self.grpc_rate().min(self.export_rate())
    }
    fn loss_free(&self) -> bool {
        self.grpc == self.sent && self.export == self.sent
    }
    /// Events neither delivered nor counted as lost, per consumer (negative: the loss counters
    /// also counted other processes' events).
    fn unaccounted(&self) -> (i64, i64) {
        let n = self.sent as i64;
        let k = self.kernel_lost as i64;
        (
            n - self.grpc as i64 - self.queue_lost as i64 - k,
            n - self.export as i64 - self.export_lost as i64 - k,
        )
    }
}

struct Profile {
    threads: Vec<(String, f64)>,
    seconds: f64,
    client_cpu: f64,
    perf_daemon: Result<String, String>,
    perf_generator: Result<String, String>,
    step: Step,
}

pub async fn run(ctx: &Ctx, p: &Params) -> (Section, Vec<Target>) {
    let start = Instant::now();
    let mut steps = Vec::new();
    let mut profile = None;
    let mut notes = Vec::new();
    if let Err(e) = measure(ctx, p, &mut steps, &mut profile, &mut notes).await {
        notes.insert(0, format!("**The measurement stopped early**: {e:#}"));
    }
    let mut s = section(&steps, profile.as_ref(), p, notes);
    s.runtime = start.elapsed();
    let best = steps.iter().filter(|s| s.loss_free()).map(Step::delivered_rate).reduce(f64::max);
    let target = Target {
        measurement: "4. pipeline throughput".into(),
        target: "≥ 1M events/s delivered without loss (gRPC and JSON file)".into(),
        result: match best {
            Some(b) => format!("{} without loss", report::rate(b)),
            None => "no loss-free step".into(),
        },
        met: if steps.is_empty() { None } else { Some(best.is_some_and(|b| b >= 1e6)) },
    };
    (s, vec![target])
}

struct Flood {
    _children: Children,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    pid: u32,
}

impl Flood {
    fn start(ctx: &Ctx, cgroup: &TestCgroup) -> anyhow::Result<Self> {
        let mut child = cgroup
            .command(&ctx.tool.path)
            .arg("udp-flood")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn swbench udp-flood")?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let pid = child.id();
        let children = Children(vec![child]);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if !line.starts_with("ready") {
            bail!("udp-flood: {}", line.trim());
        }
        Ok(Self { _children: children, stdin, stdout, pid })
    }

    /// Sends `count` datagrams at `rate`; returns (sent, ns).
    fn send(&mut self, dest: Dest, rate: f64, count: u64) -> anyhow::Result<(u64, u64)> {
        writeln!(self.stdin, "{rate} {count} {}", dest.arg())?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["ok", sent, ns] => Ok((sent.parse()?, ns.parse()?)),
            _ => bail!("udp-flood: {}", line.trim()),
        }
    }
}

fn lost(s: &GetStatusResponse, stage: &str) -> u64 {
    s.lost_by_stage.get(stage).copied().unwrap_or(0)
}

/// Counts, in the export file from `offset` on, the datagram events of `pid`; moves `offset`
/// past the last complete line.
fn count_export(path: &Path, offset: &mut u64, pid: u32) -> anyhow::Result<u64> {
    let mut f = fs::File::open(path)?;
    f.seek(SeekFrom::Start(*offset))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let needle = format!("\"pid\":{pid},");
    let mut line = Vec::with_capacity(4096);
    let mut n = 0;
    loop {
        line.clear();
        let got = r.read_until(b'\n', &mut line)?;
        if got == 0 || line.last() != Some(&b'\n') {
            break;
        }
        *offset += got as u64;
        // The first "pid" after the event's process is the process's own.
        if let Some(at) = find(&line, b"\"process_datagram\":{\"process\":{")
            && let Some(i) = find(&line[at..], b"\"pid\":")
            && line[at + i..].starts_with(needle.as_bytes())
        {
            n += 1;
        }
    }
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `perf record` of `pid` for `seconds` (cpu-clock samples: this VM has no hardware counters).
fn perf_record(pid: u32, seconds: f64, out: &Path) -> Result<Children, String> {
    Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "999", "-p", &pid.to_string(), "-o"])
        .arg(out)
        .args(["--", "sleep", &format!("{seconds}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(|c| Children(vec![c]))
        .map_err(|e| format!("perf could not start: {e}"))
}

fn perf_finish(children: Result<Children, String>, data: &Path, sort: &str) -> Result<String, String> {
    let mut children = children?;
    let child = children.0.pop().ok_or("perf: no process")?;
    let out = child.wait_with_output().map_err(|e| format!("perf record: {e}"))?;
    if !out.status.success() {
        return Err(format!("perf record failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let out = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", sort, "--percent-limit", "1.5", "-i"])
        .arg(data)
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    if !out.status.success() {
        return Err(format!("perf report failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .take(25)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if lines.is_empty() { Err("perf recorded no samples".into()) } else { Ok(lines.join("\n")) }
}

async fn measure(
    ctx: &Ctx,
    p: &Params,
    steps: &mut Vec<Step>,
    profile: &mut Option<Profile>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    // Rotation would move events out of the file while they are counted: one large file.
    let d = Sidewalld::start(&ctx.sidewalld, "export_file_max_mb = 1000000", true).await?;
    let export = d.export.clone().context("export file")?;
    for f in d.failed_sensors() {
        notes.push(format!("sensor failed to attach: {f}"));
    }
    let cgroup = TestCgroup::new("bench-flood");
    let flood = Flood::start(ctx, &cgroup)?;
    let pid = flood.pid;
    let before = d.status().await?.subscribers;
    let req = GetEventsRequest {
        allow_list: vec![
            Filter {
                pid: vec![pid],
                event_set: vec![EventType::ProcessDatagram as i32],
                ..Default::default()
            },
            Filter { event_set: vec![EventType::LostEvents as i32], ..Default::default() },
        ],
        deny_list: vec![],
    };
    let mut stream = rawstream::get_events(sidewall_proto::client::connect(&d.address()).await?, req).await?;
    let rx = Arc::new(Rx::default());
    let rx2 = rx.clone();
    let reader = tokio::spawn(async move {
        let mut checked = false;
        while let Ok(Some(msg)) = stream.message().await {
            let now = sys::monotonic_ns();
            if msg.first() == Some(&rawstream::DATAGRAM_TAG) {
                rx2.datagrams.fetch_add(1, Relaxed);
                if !checked {
                    // The first one is decoded: it must be the generator's datagram.
                    checked = true;
                    let ok = rawstream::decode(&msg).is_some_and(|e| match e.event {
                        Some(Event::ProcessDatagram(dg)) => dg.process.is_some_and(|p| p.pid == pid),
                        _ => false,
                    });
                    if !ok {
                        rx2.wrong_pid.fetch_add(1, Relaxed);
                    }
                }
            } else {
                match rawstream::decode(&msg).and_then(|e| e.event) {
                    Some(Event::LostEvents(l)) if l.stage == "subscriber_queue" => {
                        rx2.lost_queue.fetch_add(l.count, Relaxed);
                    }
                    Some(Event::LostEvents(l)) if l.stage == "kernel_ringbuf" => {
                        rx2.lost_kernel_socket
                            .fetch_add(l.by_kind.get("socket").copied().unwrap_or(0), Relaxed);
                    }
                    _ => {
                        rx2.other.fetch_add(1, Relaxed);
                    }
                }
            }
            rx2.last_ns.store(now, Relaxed);
        }
    });
    let start = Instant::now();
    while d.status().await?.subscribers <= before {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the GetEvents stream was never registered");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut runner = Runner { d: &d, rx: &rx, export: &export, pid, offset: 0, flood: Some(flood), p };
    for (dest, rates) in &p.phases {
        for &r in rates {
            let s = runner.step(*dest, r).await?;
            steps.push(s);
        }
        // Between the last loss-free and the first lossy step: a few more rates.
        for _ in 0..p.refine {
            let mut sorted: Vec<&Step> = steps.iter().filter(|s| s.dest == *dest && s.asked > 0.0).collect();
            sorted.sort_by(|a, b| a.offered().total_cmp(&b.offered()));
            let Some(i) = sorted.iter().position(|s| !s.loss_free()) else { break };
            if i == 0 {
                break;
            }
            let (lo, hi) = (sorted[i - 1].offered(), sorted[i].offered());
            if hi / lo < 1.15 {
                break;
            }
            let s = runner.step(*dest, (lo * hi).sqrt()).await?;
            steps.push(s);
        }
    }
    // The profile: one more step as fast as possible to unroutable destinations (the highest
    // rate the daemon gets), with the CPU time of each daemon thread, and perf of the daemon
    // and of the generator.
    if p.profile_seconds > 0.0 {
        let threads0 = sys::thread_cpu(d.pid());
        let me0 = sys::cpu_seconds(std::process::id()).unwrap_or(0.0);
        let (dd, gd) = (d.dir.path().join("perf-daemon.data"), d.dir.path().join("perf-generator.data"));
        let perf_d = perf_record(d.pid(), p.profile_seconds, &dd);
        let perf_g = perf_record(pid, p.profile_seconds, &gd);
        let t = Instant::now();
        let step = runner.step(Dest::Unroutable, 0.0).await?;
        let seconds = t.elapsed().as_secs_f64();
        let threads1 = sys::thread_cpu(d.pid());
        let threads = threads1
            .iter()
            .map(|(name, s1)| {
                let s0 = threads0.iter().find(|(n0, _)| n0 == name).map_or(0.0, |(_, s)| *s);
                (name.clone(), s1 - s0)
            })
            .collect();
        let (perf_daemon, perf_generator) = tokio::task::block_in_place(|| {
            (perf_finish(perf_d, &dd, "comm,dso,sym"), perf_finish(perf_g, &gd, "sym"))
        });
        *profile = Some(Profile {
            threads,
            seconds,
            client_cpu: sys::cpu_seconds(std::process::id()).unwrap_or(0.0) - me0,
            perf_daemon,
            perf_generator,
            step,
        });
    }
    if rx.wrong_pid.load(Relaxed) > 0 {
        notes.push(
            "The first datagram event received was not the generator's: the counts below may be wrong."
                .into(),
        );
    }
    drop(runner);
    reader.abort();
    Ok(())
}

/// Runs steps: the generator in a blocking task, while the client's counts, the export file
/// and GetStatus are followed every 100 ms.
struct Runner<'a> {
    d: &'a Sidewalld,
    rx: &'a Rx,
    export: &'a Path,
    pid: u32,
    offset: u64,
    flood: Option<Flood>,
    p: &'a Params,
}

impl Runner<'_> {
    async fn step(&mut self, dest: Dest, asked: f64) -> anyhow::Result<Step> {
        sys::check_interrupted()?;
        let (p, d, rx, pid) = (self.p, self.d, self.rx, self.pid);
        let count = if asked > 0.0 { (asked * p.step_seconds) as u64 } else { p.max_count };
        let count = count.clamp(1000, p.max_count);
        let s0 = d.status().await?;
        let (g0, q0, ks0) =
            (rx.datagrams.load(Relaxed), rx.lost_queue.load(Relaxed), rx.lost_kernel_socket.load(Relaxed));
        count_export(self.export, &mut self.offset, pid)?;
        let (gcpu0, dcpu0) = (sys::cpu_seconds(pid).unwrap_or(0.0), sys::cpu_seconds(d.pid()).unwrap_or(0.0));
        let mut flood = self.flood.take().context("the generator is gone")?;
        let t0 = sys::monotonic_ns();
        let mut generator = Some(tokio::task::spawn_blocking(move || {
            let r = flood.send(dest, asked, count);
            (flood, r)
        }));
        let mut gen_end = Instant::now();
        let (mut export_n, mut export_done_ns) = (0u64, t0 + 1);
        let (mut last_change, mut last) = (Instant::now(), (0, 0, 0, 0));
        let mut sent_ns: Option<(u64, u64)> = None;
        let mut timeout = false;
        // Until the generator is done and every event arrived, or else until the counts have
        // not moved for 1.5 s (and the once-a-second loss reports have come).
        let s1 = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(h) = generator.take_if(|h| h.is_finished()) {
                let (flood, r) = h.await.context("generator task")?;
                self.flood = Some(flood);
                sent_ns = Some(r?);
                gen_end = Instant::now();
            }
            let s = d.status().await?;
            let new = count_export(self.export, &mut self.offset, pid)?;
            if new > 0 {
                export_n += new;
                export_done_ns = sys::monotonic_ns();
            }
            let now = (
                rx.datagrams.load(Relaxed),
                export_n,
                lost(&s, "kernel_ringbuf"),
                lost(&s, "subscriber_queue") + lost(&s, "export_file"),
            );
            if now != last {
                last = now;
                last_change = Instant::now();
            }
            if let Some((sent, _)) = sent_ns
                && now.0 - g0 == sent
                && export_n == sent
            {
                // Everything arrived: no loss report to wait for.
                break s;
            }
            if generator.is_none() {
                if last_change.elapsed() > Duration::from_millis(1500)
                    && gen_end.elapsed() > Duration::from_millis(2200)
                {
                    break s;
                }
                if gen_end.elapsed() > Duration::from_secs(120) {
                    timeout = true;
                    break s;
                }
            }
        };
        sys::foreign_daemons(&[d.pid()]);
        let (sent, gen_ns) = sent_ns.context("no result from the generator")?;
        let gen_cpu = sys::cpu_seconds(pid).unwrap_or(0.0) - gcpu0;
        let grpc = rx.datagrams.load(Relaxed) - g0;
        let grpc_end = rx.last_ns.load(Relaxed).max(t0 + 1);
        let step = Step {
            dest,
            asked,
            sent,
            gen_ns,
            gen_cpu,
            daemon_cpu: sys::cpu_seconds(d.pid()).unwrap_or(0.0) - dcpu0,
            grpc,
            grpc_ns: grpc_end - t0,
            export: export_n,
            export_ns: export_done_ns - t0,
            kernel_lost: lost(&s1, "kernel_ringbuf") - lost(&s0, "kernel_ringbuf"),
            kernel_lost_socket: rx.lost_kernel_socket.load(Relaxed) - ks0,
            queue_lost: lost(&s1, "subscriber_queue") - lost(&s0, "subscriber_queue"),
            queue_lost_inband: rx.lost_queue.load(Relaxed) - q0,
            export_lost: lost(&s1, "export_file") - lost(&s0, "export_file"),
            drain_timeout: timeout,
        };
        eprintln!(
            "bench: pipeline: {} asked {} sent {} at {}: grpc {} export {} lost kernel {} queue {} export {}",
            dest.label(),
            if asked > 0.0 { report::rate(asked) } else { "max".into() },
            sent,
            report::rate(step.offered()),
            step.grpc,
            step.export,
            step.kernel_lost,
            step.queue_lost,
            step.export_lost
        );
        Ok(step)
    }
}

fn per_event(cpu: f64, n: u64) -> String {
    if n == 0 { "—".into() } else { report::ns(Some(cpu * 1e9 / n as f64)) }
}

fn section(steps: &[Step], profile: Option<&Profile>, p: &Params, mut notes: Vec<String>) -> Section {
    let mut s = Section { title: "4. Pipeline throughput and loss accounting".into(), ..Default::default() };
    let phases: Vec<String> = p
        .phases
        .iter()
        .map(|(dest, rates)| {
            let r: Vec<String> =
                rates.iter().map(|r| if *r > 0.0 { report::rate(*r) } else { "max".into() }).collect();
            format!("{}: {}", dest.label(), r.join(", "))
        })
        .collect();
    s.how = vec![
        "One daemon (built-in configuration, plus the JSON export file, one file without rotation), one \
         gRPC client streaming the generator's `process_datagram` events and every `lost_events` event \
         (a GetEvents allow list). The client counts messages without decoding them (it decodes only \
         `lost_events`, and the first datagram as a check), to take as little CPU as possible from the \
         daemon on this 2-core machine."
            .into(),
        format!(
            "Load: `swbench udp-flood`, in a network namespace of its own and a test-owned cgroup, sends \
             datagrams each to a destination never used before (address × 64000 ports), so the kernel's \
             folding of repeats (one socket, one destination) never applies and each datagram is exactly \
             one ring-buffer record and one event. Two kinds of destination: **loopback** (127.0.0.0/8 \
             with `sendmmsg`, delivered on `lo`: the whole UDP path, as the issue asks) and **no route** \
             (10.0.0.0/8 with `sendto`: the cgroup sendmsg hook sees the datagram, then routing fails with \
             ENETUNREACH; the daemon gets the same record and builds the same event, but the generator \
             spends far less CPU per event, so it can offer the daemon a much higher rate on 2 cores). \
             Offered rates per second ({}); \"max\" is as fast as the generator goes. Each step lasts about \
             {} s (at most {} datagrams); then up to {} more steps between the last loss-free rate and the \
             first lossy one. After each step the bench waits until nothing moves for 1.5 s, then counts \
             the events the client received, the generator's lines in the export file, and the losses of \
             each stage from GetStatus (`lost_by_stage`) and the in-band `lost_events` records. Commands: \
             `swbench udp-flood`, fed `RATE COUNT lo|unreach` lines on its stdin; daemon configuration as in \
             1–3 plus `export_file = \"<temp dir>/events.json\"` and `export_file_max_mb = 1000000`.",
            phases.join("; "),
            p.step_seconds,
            p.max_count,
            p.refine
        ),
        "**Accounting**: for each consumer, generated = delivered + lost in the kernel ring buffer + lost \
         at that consumer's queue. The kernel's and the export file's counters are the daemon's, for \
         all processes: other processes' events lost at the same time make the counted losses larger \
         than the generator's (the \"unaccounted\" columns are then negative). A positive unaccounted \
         count would be a silent loss. The in-band counts are what reached this client in `lost_events` \
         records; such a record can itself find the client's queue full, and is then counted there (a \
         −1 in the gRPC column). Rates delivered are events over the time from the start of the step to \
         the last one received (gRPC) or written (file, to 100 ms)."
            .into(),
    ];
    let mut t = Table::new(&[
        "Destinations",
        "Offered (asked)",
        "Generated",
        "Delivered gRPC (rate)",
        "Delivered file (rate)",
        "Lost: kernel ring buffer (socket records reported in-band)",
        "Lost: gRPC queue (in-band)",
        "Lost: export file",
        "Unaccounted gRPC / file",
        "Generator CPU per datagram",
        "Daemon CPU per generated event (all its work in the step)",
        "Loss-free?",
    ]);
    let mut sorted: Vec<&Step> = steps.iter().collect();
    sorted.sort_by(|a, b| (a.dest as u8).cmp(&(b.dest as u8)).then(a.offered().total_cmp(&b.offered())));
    for st in &sorted {
        let (ug, uf) = st.unaccounted();
        t.row(vec![
            st.dest.label().into(),
            format!(
                "{} ({})",
                report::rate(st.offered()),
                if st.asked > 0.0 { report::rate(st.asked) } else { "max".into() }
            ),
            st.sent.to_string(),
            format!("{} ({})", st.grpc, report::rate(st.grpc_rate())),
            format!("{} ({})", st.export, report::rate(st.export_rate())),
            format!("{} ({})", st.kernel_lost, st.kernel_lost_socket),
            format!("{} ({})", st.queue_lost, st.queue_lost_inband),
            st.export_lost.to_string(),
            format!("{ug} / {uf}{}", if st.drain_timeout { " (drain timed out)" } else { "" }),
            per_event(st.gen_cpu, st.sent),
            per_event(st.daemon_cpu, st.sent),
            if st.loss_free() { "yes".into() } else { "**no**".into() },
        ]);
    }
    s.tables.push((String::new(), t));
    let silent: Vec<String> = sorted
        .iter()
        .filter(|st| st.unaccounted().0 > 0 || st.unaccounted().1 > 0)
        .map(|st| format!("{} {}", st.dest.label(), report::rate(st.offered())))
        .collect();
    if !steps.is_empty() {
        notes.push(if silent.is_empty() {
            "**Every event that did not arrive was counted**: in every step, generated − delivered − counted \
             losses is 0 (or negative where the daemon's counters also counted other processes' events), \
             for the gRPC client and for the export file alike."
                .into()
        } else {
            format!(
                "**Uncounted loss** in the steps at {}: events neither delivered nor counted as lost (a bug to \
                 chase, or a step whose drain timed out).",
                silent.join(", ")
            )
        });
    }
    for dest in [Dest::Loopback, Dest::Unroutable] {
        let mine: Vec<&&Step> = sorted.iter().filter(|s| s.dest == dest).collect();
        if mine.is_empty() {
            continue;
        }
        let free = mine.iter().filter(|s| s.loss_free()).map(|s| s.delivered_rate()).reduce(f64::max);
        let top = mine.iter().map(|s| s.offered()).reduce(f64::max).unwrap_or(0.0);
        match mine.iter().find(|s| !s.loss_free()) {
            Some(l) => {
                let stage = if l.kernel_lost > 0 {
                    "in the kernel ring buffer (the daemon's reader fell behind)"
                } else if l.queue_lost > 0 && l.export_lost > 0 {
                    "at the gRPC client's queue and at the export file's queue"
                } else if l.queue_lost > 0 {
                    "at the gRPC client's queue"
                } else {
                    "at the export file's queue"
                };
                notes.push(format!(
                    "{}: loss begins at an offered {} (the best loss-free step delivered {}); the first losses are {stage}.",
                    dest.label(),
                    report::rate(l.offered()),
                    free.map_or("nothing".into(), report::rate)
                ));
            }
            None => notes.push(format!(
                "{}: no step lost an event, up to the highest rate the generator reached ({} offered, {} \
                 delivered): there the generator, not the daemon, was the limit.",
                dest.label(),
                report::rate(top),
                free.map_or("—".into(), report::rate)
            )),
        }
    }
    let queue_first: Vec<&&Step> = sorted
        .iter()
        .filter(|s| !s.loss_free() && s.queue_lost > 0 && s.kernel_lost == 0 && s.export_lost == 0)
        .collect();
    if let Some(q) = queue_first.first() {
        notes.push(format!(
            "**The gRPC client's queue overflows first** (e.g. {} offered to {}: {} lost there, none in the \
             kernel ring buffer or at the export file): the pipeline task and the JSON writer kept up, the \
             stream did not. A stream's queue holds 4096 events (`subscriber_queue` in the built-in \
             configuration; the export file's holds 65536); its task deep-copies each event out of the shared \
             `Arc` before encoding it (`daemon/src/api/service.rs`: the malloc, memmove, `String::clone` and \
             `encode_varint` lines of the daemon's profile below), and when it is not scheduled for 4096 \
             events' time ({} at that rate) on the 2 busy cores, the queue is full. Where loss begins moves \
             with how the 2 cores are shared at that moment (the generator, this client, other work on the \
             machine).",
            report::rate(q.offered()),
            q.dest.label(),
            q.queue_lost,
            report::ns(Some(4096.0 * 1e9 / q.offered().max(1.0)))
        ));
    }
    let best = sorted.iter().filter(|s| s.loss_free()).map(|s| s.delivered_rate()).reduce(f64::max);
    if !steps.is_empty() && best.is_none_or(|b| b < 1e6) {
        let mut why = format!(
            "**Why 1M events/s is missed** (best loss-free: {}): 1M events/s on 2 cores is 2 µs of CPU per \
             event for everything: making the event in the kernel, the daemon's work and the consumers'. \
             The generator alone needs more than that per datagram (the column above: the UDP path, and \
             the cgroup program that builds the record, which also looks up and inserts the destination in \
             its LRU map of recent destinations). The daemon decodes each record, resolves its process and \
             container, builds the protobuf event (the process, its parent, its container and pod), fans \
             it out, and the export file serializes it to JSON (about 1.3 KB a line).",
            best.map_or("none".into(), report::rate)
        );
        if let Some(pr) = profile {
            let total: f64 = pr.threads.iter().map(|(_, s)| s).sum();
            let n = pr.step.sent.max(1) as f64;
            why.push_str(&format!(
                " In the profile step below ({} generated), the daemon used {} of CPU per event ({:.2} cores on \
                 average over the step and its drain), the generator {} per datagram, this client {} per \
                 event: at the daemon's cost per event, one core handles about {}.",
                pr.step.sent,
                report::ns(Some(total * 1e9 / n)),
                total / pr.seconds,
                report::ns(Some(pr.step.gen_cpu * 1e9 / n)),
                report::ns(Some(pr.client_cpu * 1e9 / n)),
                report::rate(n / total.max(1e-9))
            ));
            let mut threads = pr.threads.clone();
            threads.sort_by(|a, b| b.1.total_cmp(&a.1));
            let split: Vec<String> = threads
                .iter()
                .filter(|(_, c)| *c > 0.0)
                .take(3)
                .map(|(t, c)| format!("{t} {}", report::ns(Some(c * 1e9 / n))))
                .collect();
            why.push_str(&format!(
                " Per event, by daemon thread: {} (export-file writes about 1.3 KB of JSON per event, a large \
                 part of it the kernel copying into the page cache; the tokio workers run the pipeline task \
                 and the gRPC stream).",
                split.join(", ")
            ));
        }
        if let Some(Ok(text)) = profile.map(|pr| &pr.perf_generator) {
            let share: f64 = text
                .lines()
                .filter(|l| {
                    ["bpf", "htab", "lookup_nulls_elem_raw", "copy_from_kernel_nofault"]
                        .iter()
                        .any(|k| l.contains(k))
                })
                .filter_map(|l| l.split('%').next()?.trim().parse::<f64>().ok())
                .sum();
            why.push_str(&format!(
                " In the generator's profile, at least {share:.0}% of its samples are in eBPF programs and \
                 maps (bpf_*, htab_*, lookup_nulls_elem_raw, bpf_lru_*, copy_from_kernel_nofault: the cgroup \
                 sendmsg program, its LRU map of recent destinations, which must evict an entry for every \
                 new destination, and the reads of the task that fill the record; the copies of the program \
                 that other sidewalld processes on this machine attached are included)."
            ));
        }
        notes.push(why);
    }
    if let Some(pr) = profile {
        let mut t = Table::new(&["Daemon thread", "CPU seconds", "Cores"]);
        let mut threads = pr.threads.clone();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (name, secs) in threads.iter().filter(|(_, s)| *s > 0.0) {
            t.row(vec![name.clone(), format!("{secs:.2}"), format!("{:.2}", secs / pr.seconds)]);
        }
        s.tables.push((
            format!(
                "**Profile**: a step as fast as possible to unroutable destinations ({} generated at {}, {} \
                 delivered to gRPC, {} to the file; {:.1} s with the drain). CPU time per daemon thread, from \
                 /proc/<pid>/task/*/stat (tokio-rt-worker: the pipeline task, the gRPC server and the other \
                 async work; export-file: the JSON writer):",
                pr.step.sent,
                report::rate(pr.step.offered()),
                pr.step.grpc,
                pr.step.export,
                pr.seconds
            ),
            t,
        ));
        for (who, r, sort) in [
            ("the daemon", &pr.perf_daemon, "thread, object, symbol"),
            (
                "the generator (its CPU is almost all kernel: the UDP path and the cgroup program)",
                &pr.perf_generator,
                "symbol",
            ),
        ] {
            match r {
                Ok(text) => s.tables.push((
                    format!(
                        "`perf record -e cpu-clock -F 999` of {who}, the first {} s of the same step (cpu-clock \
                         samples: this VM has no hardware counters), by {sort}, above 1.5%:\n\n```\n{text}\n```",
                        p.profile_seconds
                    ),
                    Table::default(),
                )),
                Err(e) => notes.push(format!("No perf profile of {who}: {e}")),
            }
        }
    }
    s.notes = notes;
    s
}
