//! The kernel's socket diagnostics (NETLINK_SOCK_DIAG, what `ss` uses): lists the TCP sockets
//! of a network namespace with their cookie and cgroup, and destroys one (`SOCK_DESTROY`,
//! what `ss -K` does). No crate speaks SOCK_DESTROY or the cgroup attribute, and the
//! messages are a few fixed structs, so they are written here.

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use sidewall_common::wire::{AF_INET, AF_INET6, IPPROTO_TCP};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const INET_DIAG_CGROUP_ID: u16 = 21;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the socket id.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_sockid`: ports, two 16-byte addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_msg`: family, state, timer, retrans, socket id, five u32 counters.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// One TCP socket as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// `wire::AF_INET` or `wire::AF_INET6` (one byte in `struct inet_diag_msg`).
    pub family: u8,
    /// A TCP state (`wire::TCP_*`).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub interface: u32,
    pub cookie: u64,
    /// The cgroup of the process that created the socket (0 if the kernel did not say).
    pub cgroup_id: u64,
}

/// A NETLINK_SOCK_DIAG socket opened inside one network namespace (it stays bound to it).
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    /// Opens the socket in the namespace of `netns` (an nsfs file such as /proc/PID/ns/net),
    /// from a short-lived thread, so the daemon's own threads never change namespace.
    pub fn open_in(netns: &File) -> io::Result<Self> {
        let ns = netns.try_clone()?;
        let fd = std::thread::spawn(move || -> io::Result<OwnedFd> {
            // SAFETY: setns on this thread only, with a valid descriptor.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            open_socket()
        })
        .join()
        .map_err(|_| io::Error::other("sock_diag thread panicked"))??;
        Ok(Self { fd, seq: 0 })
    }

    /// The TCP sockets (IPv4 and IPv6) in the states of `states` (bit `wire::TCP_*` per state).
    pub fn tcp_sockets(&mut self, states: u32) -> io::Result<Vec<DiagSocket>> {
        let mut out = Vec::new();
        for family in [AF_INET as u8, AF_INET6 as u8] {
            let req = request(family, states, None);
            self.send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &req)?;
            self.receive(|kind, payload| match kind {
                SOCK_DIAG_BY_FAMILY => {
                    out.extend(parse_socket(payload));
                    Ok(false)
                }
                _ => Ok(true),
            })?;
        }
        Ok(out)
    }

    /// Destroys `s`: both ends see the connection aborted (the local one ECONNABORTED, the
    /// peer a reset). The cookie makes sure it is this socket and not a later one.
    pub fn destroy(&mut self, s: &DiagSocket) -> io::Result<()> {
        let req = request(s.family, u32::MAX, Some(s));
        self.send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &req)?;
        self.receive(|_, _| Ok(true))
    }

    fn send(&mut self, kind: u16, flags: u16, payload: &[u8]) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + payload.len());
        msg.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: sending our own buffer on our own socket (the kernel is the default peer).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Reads replies to the last request until `each` says done, NLMSG_DONE, or an error.
    fn receive(&mut self, mut each: impl FnMut(u16, &[u8]) -> io::Result<bool>) -> io::Result<()> {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: receiving into our own buffer.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for (kind, seq, payload) in messages(&buf[..n as usize]) {
                if seq != self.seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => return netlink_error(payload),
                    _ if each(kind, payload)? => return Ok(()),
                    _ => {}
                }
            }
        }
    }
}

fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct inet_diag_req_v2` for TCP; with `id`, for that one socket.
fn request(family: u8, states: u32, id: Option<&DiagSocket>) -> [u8; REQ_LEN] {
    let mut r = [0u8; REQ_LEN];
    r[0] = family;
    r[1] = IPPROTO_TCP;
    r[4..8].copy_from_slice(&states.to_ne_bytes());
    if let Some(s) = id {
        let sid = &mut r[8..];
        sid[0..2].copy_from_slice(&s.local.port().to_be_bytes());
        sid[2..4].copy_from_slice(&s.remote.port().to_be_bytes());
        sid[4..20].copy_from_slice(&addr_bytes(&s.local.ip()));
        sid[20..36].copy_from_slice(&addr_bytes(&s.remote.ip()));
        sid[36..40].copy_from_slice(&s.interface.to_ne_bytes());
        sid[40..44].copy_from_slice(&(s.cookie as u32).to_ne_bytes());
        sid[44..48].copy_from_slice(&((s.cookie >> 32) as u32).to_ne_bytes());
    }
    r
}

/// An address as the socket id holds it: IPv4 in the first four bytes.
fn addr_bytes(ip: &IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b = a.octets(),
    }
    b
}

/// The netlink messages in one datagram: (type, sequence, payload).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        let payload = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((kind, seq, payload))
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// NLMSG_ERROR carries a negated errno (0 is the acknowledgement).
fn netlink_error(payload: &[u8]) -> io::Result<()> {
    let errno = payload.get(0..4).and_then(|b| b.try_into().ok()).map_or(-libc::EIO, i32::from_ne_bytes);
    if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) }
}

/// `struct inet_diag_msg` and its attributes.
fn parse_socket(p: &[u8]) -> Option<DiagSocket> {
    if p.len() < MSG_LEN {
        return None;
    }
    let family = p[0];
    let sid = &p[4..4 + SOCKID_LEN];
    let ip = |b: &[u8]| -> Option<IpAddr> {
        match u16::from(family) {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
            _ => None,
        }
    };
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let u32_at = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    Some(DiagSocket {
        family,
        state: p[1],
        local: SocketAddr::new(ip(&sid[4..20])?, port(&sid[0..2])),
        remote: SocketAddr::new(ip(&sid[20..36])?, port(&sid[2..4])),
        interface: u32_at(&sid[36..40]),
        cookie: u64::from(u32_at(&sid[40..44])) | (u64::from(u32_at(&sid[44..48])) << 32),
        cgroup_id: attribute(&p[MSG_LEN..], INET_DIAG_CGROUP_ID)
            .and_then(|v| v.get(..8)?.try_into().ok())
            .map_or(0, u64::from_ne_bytes),
    })
}

/// The value of the first `struct rtattr` of type `kind`.
fn attribute(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let t = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if t == kind {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use sidewall_common::wire::{TCP_ESTABLISHED, TCP_LISTEN};

    use super::*;

    /// A listener and a connection to it on loopback: both listed with this thread's cgroup,
    /// and destroying the client's socket aborts it.
    #[test]
    fn lists_and_destroys_sockets_of_a_namespace() {
        // SOCK_DESTROY needs CAP_NET_ADMIN.
        if !crate::testing::can_run(crate::testing::root()) {
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let local = client.local_addr().expect("local");
        let (_server, _) = listener.accept().expect("accept");

        let netns = File::open("/proc/self/ns/net").expect("own netns");
        let mut diag = SockDiag::open_in(&netns).expect("sock_diag");
        let all = diag.tcp_sockets(1 << TCP_ESTABLISHED | 1 << TCP_LISTEN).expect("dump");
        let ours = all.iter().find(|s| s.local == local).expect("our client socket is listed");
        assert_eq!((ours.state, ours.remote.port()), (TCP_ESTABLISHED, port));
        assert_ne!(ours.cookie, 0);
        // The cgroup2 mount: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = crate::identity::cgroups::cgroup2_mount(&mountinfo).expect("a cgroup2 mount");
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup2 line");
        let dir = root.join(own.trim_start_matches('/'));
        let ino = std::fs::metadata(&dir).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_eq!(Some(ours.cgroup_id), ino.ok(), "the creating process's cgroup, {}", dir.display());
        assert!(all.iter().any(|s| s.state == TCP_LISTEN && s.local.port() == port));

        diag.destroy(ours).expect("destroy");
        let mut c = &client;
        let err = std::io::Write::write_all(&mut c, b"x").expect_err("the socket was aborted");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        // A stale cookie names no socket any more.
        assert!(diag.destroy(ours).is_err());
    }
}
