//! A network namespace owned by one test, holding only loopback and sink devices: whatever
//! is sent in it stays in it (a sink drops every packet routed to it). Commands can be made
//! to enter it; dropping it deletes it, also on failure.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::Command,
};

pub struct TestNetns {
    pub name: String,
    /// Open while the namespace is ours: commands enter it through this descriptor.
    file: Option<File>,
}

impl TestNetns {
    /// A new namespace with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("sidewall-test-{}-{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let mut ns = Self { name, file: None };
        let path = format!("/run/netns/{}", ns.name);
        ns.file = Some(File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}")));
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <this namespace> args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// A sink device `dev` with the addresses `cidrs` (IPv6 ones without duplicate address
    /// detection, so they are usable at once), and the default routes through it: a packet
    /// to any other address is dropped there rather than refused as unreachable.
    ///
    /// The sink is an ifb device: without a tc filter redirecting to it, it drops every
    /// packet it is given, and it has no ARP, like a dummy device (which kernels built
    /// without CONFIG_DUMMY, such as this project's, do not have).
    pub fn add_sink(&self, dev: &str, cidrs: &[&str]) {
        self.ip(&["link", "add", dev, "type", "ifb"]);
        for cidr in cidrs {
            let mut args = vec!["addr", "add", cidr, "dev", dev];
            if cidr.contains(':') {
                args.push("nodad");
            }
            self.ip(&args);
        }
        self.ip(&["link", "set", dev, "up"]);
        self.ip(&["route", "add", "default", "dev", dev]);
        self.ip(&["-6", "route", "add", "default", "dev", dev]);
    }

    /// Makes `cmd` join this namespace between fork and exec (after whatever `cmd` was
    /// already set to do there, such as joining a cgroup).
    pub fn enter<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        let fd = self.file.as_ref().expect("namespace is open").as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe; the descriptor stays open in the parent
        // until the spawn returns (it is close-on-exec, so the program does not inherit it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        self.file = None;
        let ok = Command::new("ip").args(["netns", "del", &self.name]).status().is_ok_and(|s| s.success());
        if !ok {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}
