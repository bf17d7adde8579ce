//! Tries each destination read from stdin, one `udp|tcp ADDRESS PORT` per line, once: a UDP
//! datagram sent to it (sendto on an unconnected socket) or a TCP connect to it, from a socket
//! of the address's family. Prints one line per case: `ok`, `EPERM` (refused by a cgroup
//! hook), `errno N`, or the kind of another failure (`TimedOut`: nobody answered the SYN).
//! Only a policy can make the kernel answer EPERM here; what the destination does with the
//! packet does not matter.

use std::{
    io::{self, BufRead as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

/// A connect that gets no answer (a SYN dropped on a dummy device) was allowed: stop waiting.
const CONNECT_WAIT: Duration = Duration::from_millis(100);

fn main() {
    let mut out = io::stdout().lock();
    for line in io::stdin().lock().lines() {
        let line = line.expect("read stdin");
        let case: Vec<&str> = line.split_whitespace().collect();
        let [proto, ip, port] = case[..] else { panic!("not `udp|tcp ADDRESS PORT`: {line:?}") };
        let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
        let to = SocketAddr::new(ip, port.parse().unwrap_or_else(|e| panic!("{port}: {e}")));
        let result = match proto {
            "udp" => send(to),
            "tcp" => TcpStream::connect_timeout(&to, CONNECT_WAIT).map(drop),
            _ => panic!("unknown protocol {proto:?}"),
        };
        let said = match result {
            Ok(()) => "ok".to_string(),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => "EPERM".to_string(),
            Err(e) => e.raw_os_error().map_or_else(|| format!("{:?}", e.kind()), |n| format!("errno {n}")),
        };
        writeln!(out, "{said}").and_then(|()| out.flush()).expect("write stdout");
    }
}

fn send(to: SocketAddr) -> io::Result<()> {
    let any = match to.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    UdpSocket::bind((any, 0))?.send_to(b"x", to).map(drop)
}
