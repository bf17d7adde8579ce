//! Socket addresses as the kernel records them, and what counts as loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

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
}
