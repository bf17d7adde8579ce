//! Socket addresses as the kernel records them, and what counts as loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sidewall_common::wire::{AF_INET, IPPROTO_TCP, IPPROTO_UDP};

/// The address in a record (network byte order; IPv4 in the first four bytes). IPv4-mapped
/// IPv6 addresses become IPv4, so `::ffff:127.0.0.1` and `127.0.0.1` are the same place.
pub fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        return IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]));
    }
    let v6 = Ipv6Addr::from(*bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// 127.0.0.0/8 and ::1 (mapped forms are already IPv4 here).
pub fn is_loopback(ip: &IpAddr) -> bool {
    ip.is_loopback()
}

pub fn family_name(family: u16, ip: &IpAddr) -> &'static str {
    match (family, ip) {
        (AF_INET, _) | (_, IpAddr::V4(_)) => "ipv4",
        _ => "ipv6",
    }
}

pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidewall_common::wire::AF_INET6;

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().expect("v6").octets()
    }

    #[test]
    fn mapped_and_loopback() {
        let mapped = ip(AF_INET6, &v6("::ffff:127.0.0.1"));
        assert_eq!(mapped, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(is_loopback(&mapped));
        assert!(is_loopback(&ip(AF_INET6, &v6("::1"))));
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[127, 3, 2, 1]);
        assert!(is_loopback(&ip(AF_INET, &b)), "all of 127.0.0.0/8");
        b[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert!(!is_loopback(&ip(AF_INET, &b)));
        assert_eq!(family_name(AF_INET6, &mapped), "ipv4");
    }

    /// The ABI crate's numbers are the C library's, where it has them.
    #[test]
    fn wire_numbers_agree_with_libc() {
        use sidewall_common::wire::*;
        assert_eq!(
            [AF_UNIX, AF_INET, AF_INET6],
            [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6].map(|f| f as u16)
        );
        assert_eq!([IPPROTO_TCP, IPPROTO_UDP], [libc::IPPROTO_TCP, libc::IPPROTO_UDP].map(|p| p as u8));
        assert_eq!([PTRACE_ATTACH, PTRACE_SEIZE], [libc::PTRACE_ATTACH, libc::PTRACE_SEIZE].map(u64::from));
        assert_eq!(PROC_SUPER_MAGIC, libc::PROC_SUPER_MAGIC as u64);
        assert_eq!(SIGKILL, libc::SIGKILL as u32);
    }
}
