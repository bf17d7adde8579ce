//! BENCHMARKS.md: machine, command, one table per measurement, targets and the reasons for
//! misses, all from this run.

use std::{fmt::Write as _, time::Duration};

#[derive(Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut s = format!("| {} |\n", self.header.join(" | "));
        s.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }
}

/// One measurement: how it was done, its tables, and what the numbers mean.
#[derive(Default)]
pub struct Section {
    pub title: String,
    pub how: Vec<String>,
    pub tables: Vec<(String, Table)>,
    pub notes: Vec<String>,
    pub runtime: Duration,
}

/// A target of the issue and whether this run met it.
pub struct Target {
    pub measurement: String,
    pub target: String,
    pub result: String,
    /// None: could not be measured.
    pub met: Option<bool>,
}

pub struct Machine {
    pub cpu: String,
    pub cores: String,
    pub memory: String,
    pub kernel: String,
    pub date: String,
    pub load_start: String,
    pub load_end: String,
    pub foreign_daemons: usize,
}

impl Machine {
    pub fn probe() -> Self {
        let lscpu = run("lscpu", &[]);
        let field = |name: &str| {
            lscpu
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| "?".into())
        };
        let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Self {
            cpu: format!(
                "{} ({}, {})",
                field("Model name:"),
                field("Vendor ID:"),
                field("Hypervisor vendor:")
            ),
            cores: format!(
                "{} CPUs online ({} cores per socket, {} thread(s) per core)",
                field("CPU(s):"),
                field("Core(s) per socket:"),
                field("Thread(s) per core:")
            ),
            memory: format!("{:.1} GiB", mem_kb as f64 / (1024.0 * 1024.0)),
            kernel: format!("{} ({})", run("uname", &["-r"]).trim(), run("uname", &["-v"]).trim()),
            date: run("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).trim().to_string(),
            load_start: crate::sys::loadavg(),
            load_end: String::new(),
            foreign_daemons: 0,
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub fn ns(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(x) if x >= 1e6 => format!("{:.2} ms", x / 1e6),
        Some(x) if x >= 1e4 => format!("{:.1} µs", x / 1e3),
        Some(x) if x >= 1e3 => format!("{:.2} µs", x / 1e3),
        Some(x) => format!("{x:.1} ns"),
    }
}

pub fn ratio(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(r) => format!("{r:.3} ({:+.1}%)", (r - 1.0) * 100.0),
    }
}

pub fn met(m: Option<bool>) -> String {
    match m {
        None => "not measured".into(),
        Some(true) => "yes".into(),
        Some(false) => "**no**".into(),
    }
}

pub fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 * 1024.0 / 1e6)
}

pub fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k/s", v / 1e3)
    } else {
        format!("{v:.0} /s")
    }
}

pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 { format!("{} min {:02} s", s / 60, s % 60) } else { format!("{:.1} s", d.as_secs_f64()) }
}

pub struct Run<'a> {
    pub machine: &'a Machine,
    pub command: String,
    pub quick: bool,
    pub runtime: Duration,
    pub sections: &'a [Section],
    pub targets: &'a [Target],
    pub sidewalld: String,
}

pub fn render(r: &Run<'_>) -> String {
    let m = r.machine;
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    s.push_str(
        "Written by `make bench` (`bench/`, crate `sidewall-bench`): every number below comes from the \
         run described here, on a real `sidewalld` (release build) loading the real eBPF programs. \
         Configurations are compared only within this one run, interleaved in rounds \
         (A/B/C/A/B/C..., the order rotated each round), so that drift and noise of the machine hit \
         all of them alike; each ratio is the median, over rounds, of a configuration's result \
         divided by its baseline's result in the same round. Targets are reported, never asserted.\n\n",
    );
    if r.quick {
        s.push_str(
            "**This is a quick run (`BENCH_QUICK=1`)**: tiny iterations and loads, for checking the bench \
             itself. Its numbers are noisy and its loads smaller than the targets name; run `make bench` \
             for the real figures.\n\n",
        );
    }
    s.push_str("## Machine and run\n\n");
    let mut t = Table::new(&["", ""]);
    t.row(vec!["CPU".into(), m.cpu.clone()]);
    t.row(vec!["Cores".into(), m.cores.clone()]);
    t.row(vec!["Memory".into(), m.memory.clone()]);
    t.row(vec!["Kernel".into(), m.kernel.clone()]);
    t.row(vec!["Date".into(), m.date.clone()]);
    t.row(vec!["Command".into(), format!("`{}`", r.command)]);
    t.row(vec!["Daemon".into(), format!("`{}` (release build)", r.sidewalld)]);
    t.row(vec!["Runtime of the bench".into(), duration(r.runtime)]);
    t.row(vec!["Load average (start / end)".into(), format!("{} / {}", m.load_start, m.load_end)]);
    t.row(vec![
        "Other sidewalld processes seen".into(),
        if m.foreign_daemons == 0 {
            "none at the moments sampled (other people's tests share this machine; their load is noise \
             the interleaving spreads over all configurations)"
                .into()
        } else {
            format!(
                "{} at most (other people's tests on this shared machine; their programs run in every \
                 configuration, the baselines included)",
                m.foreign_daemons
            )
        },
    ]);
    s.push_str(&t.render());
    s.push('\n');

    s.push_str("## Targets\n\n");
    let mut t = Table::new(&["Measurement", "Target", "Result", "Met?"]);
    for tg in r.targets {
        t.row(vec![tg.measurement.clone(), tg.target.clone(), tg.result.clone(), met(tg.met)]);
    }
    s.push_str(&t.render());
    s.push_str("\nWhy each miss happened is under its measurement.\n\n");

    for sec in r.sections {
        let _ = writeln!(s, "## {}\n", sec.title);
        for p in &sec.how {
            let _ = writeln!(s, "{p}\n");
        }
        for (caption, table) in &sec.tables {
            if !caption.is_empty() {
                let _ = writeln!(s, "{caption}\n");
            }
            if !table.header.is_empty() {
                s.push_str(&table.render());
                s.push('\n');
            }
        }
        if !sec.notes.is_empty() {
            for n in &sec.notes {
                let _ = writeln!(s, "- {n}");
            }
            s.push('\n');
        }
        let _ = writeln!(s, "_Time taken: {}._\n", duration(sec.runtime));
    }
    s
}
