//! swbench (tools/swbench.c), the load generator, built static at run time.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

const SRC: &str = include_str!("../tools/swbench.c");

pub struct Tool {
    pub path: PathBuf,
}

impl Tool {
    /// Compiles swbench into `dir` with `cc -static -O2`.
    pub fn build(dir: &Path) -> anyhow::Result<Self> {
        let src = dir.join("swbench.c");
        let path = dir.join("swbench");
        fs::write(&src, SRC).context("write swbench.c")?;
        let out = Command::new("cc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(&path)
            .arg(&src)
            .output()
            .context("run cc")?;
        if !out.status.success() {
            bail!("cc -static swbench.c failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self { path })
    }

    /// Copies the tool to `/swbench` inside a running container, through its root as seen
    /// from its first process (`/proc/<pid>/root`).
    pub fn copy_into(&self, container_pid: u32) -> anyhow::Result<()> {
        let dst = PathBuf::from(format!("/proc/{container_pid}/root/swbench"));
        fs::copy(&self.path, &dst).with_context(|| format!("copy swbench to {}", dst.display()))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }
}

/// The result line of a timed swbench command: `ok N ELAPSED_NS`.
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    pub n: u64,
    pub ns: u64,
}

impl Timed {
    pub fn per_op_ns(&self) -> f64 {
        self.ns as f64 / self.n.max(1) as f64
    }
}

pub fn parse_timed(what: &str, out: &Output) -> anyhow::Result<Timed> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let mut f = line.split_whitespace();
        if f.next() == Some("ok")
            && let (Some(n), Some(ns)) =
                (f.next().and_then(|v| v.parse().ok()), f.next().and_then(|v| v.parse().ok()))
        {
            return Ok(Timed { n, ns });
        }
    }
    bail!(
        "{what}: no result (exit {:?}): {} {}",
        out.status.code(),
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The first line of a command's output, trimmed.
pub fn first_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_string()
}
