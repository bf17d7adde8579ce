//! Which destinations of a connect or send a container's rule denies: the decision of the
//! cgroup connect and sendmsg hooks (bpf/programs/src/policy.rs, over the enforcement maps),
//! shared with the daemon (`Compiled::denies`, over a compiled rule, for connections that
//! already exist when a rule changes), so both judge a destination alike. The lookups are the
//! caller's; each is made only when the decision needs it.
//!
//! Addresses are in the maps' form: 16 bytes in network byte order, IPv4 as ::ffff:a.b.c.d.

use crate::enforce;

/// `addr` as a cgroup hook gives it (IPv4 in the first four bytes when `v4`) in the maps'
/// form.
#[inline(always)]
pub fn mapped(addr: &[u8; 16], v4: bool) -> [u8; 16] {
    if !v4 {
        return *addr;
    }
    let mut v6 = [0u8; 16];
    v6[10] = 0xff;
    v6[11] = 0xff;
    v6[12..].copy_from_slice(&addr[..4]);
    v6
}

/// Whether `v6` is the local host in any network namespace: 127.0.0.0/8, ::1, and the
/// unspecified addresses 0.0.0.0 and :: (a connect or send to them reaches the local host).
/// IPv4-compatible forms (::127.0.0.1) are not: the kernel routes them as IPv6.
#[inline(always)]
pub fn is_loopback_or_unspecified(v6: &[u8; 16]) -> bool {
    let zero10 = v6[..10].iter().all(|b| *b == 0);
    let mapped = zero10 && v6[10] == 0xff && v6[11] == 0xff;
    let zero15 = zero10 && v6[10..15].iter().all(|b| *b == 0);
    let v4_local = mapped && (v6[12] == 127 || v6[12..].iter().all(|b| *b == 0));
    v4_local || (zero15 && (v6[15] == 1 || v6[15] == 0))
}

/// Whether a connect or send to `v6`:`port` is denied under the enforcement `flags` of the
/// caller's container. `pod_addr`: whether `v6` is one of the pod's own addresses (listed
/// with `enforce::LOOPBACK` only), which loopback rules cover like loopback;
/// `port_allowed`: whether the loopback allow list has `port`; `egress_allowed`: whether an
/// allowed egress range holds `v6`.
#[inline(always)]
pub fn denies(
    flags: u32,
    v6: &[u8; 16],
    port: u16,
    pod_addr: impl FnOnce(&[u8; 16]) -> bool,
    port_allowed: impl FnOnce(u16) -> bool,
    egress_allowed: impl FnOnce(&[u8; 16]) -> bool,
) -> bool {
    if flags == 0 {
        return false;
    }
    if is_loopback_or_unspecified(v6) || pod_addr(v6) {
        return flags & enforce::LOOPBACK != 0 && !port_allowed(port);
    }
    flags & enforce::EGRESS != 0 && !egress_allowed(v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        mapped(&b, true)
    }

    #[test]
    fn local_forms() {
        let mut v6 = [0u8; 16];
        assert!(is_loopback_or_unspecified(&v6), "::");
        v6[15] = 1;
        assert!(is_loopback_or_unspecified(&v6), "::1");
        v6[15] = 2;
        assert!(!is_loopback_or_unspecified(&v6), "::2");
        v6[12] = 127;
        v6[15] = 1;
        assert!(!is_loopback_or_unspecified(&v6), "::127.0.0.1 is not mapped");
        assert!(is_loopback_or_unspecified(&v4([127, 3, 2, 1])));
        assert!(is_loopback_or_unspecified(&v4([0, 0, 0, 0])));
        assert!(!is_loopback_or_unspecified(&v4([0, 0, 0, 1])));
        assert!(!is_loopback_or_unspecified(&v4([128, 0, 0, 1])));
    }

    #[test]
    fn lookups_are_made_only_when_needed() {
        let never = |_: &[u8; 16]| -> bool { panic!("no lookup without flags") };
        assert!(!denies(0, &v4([10, 0, 0, 1]), 80, never, |_| panic!("port"), never));
        let lo = v4([127, 0, 0, 1]);
        assert!(denies(enforce::LOOPBACK, &lo, 80, never, |p| p == 8080, never));
        assert!(!denies(enforce::LOOPBACK, &lo, 8080, never, |p| p == 8080, never));
        assert!(!denies(enforce::EGRESS, &lo, 80, never, |_| panic!("port"), never), "loopback open");
        let out = v4([10, 0, 0, 1]);
        assert!(!denies(enforce::LOOPBACK, &out, 80, |_| false, |_| false, never), "egress open");
        assert!(denies(enforce::EGRESS, &out, 80, |_| false, |_| false, |_| false));
        assert!(
            denies(enforce::LOOPBACK | enforce::EGRESS, &out, 80, |_| true, |_| false, never),
            "pod addr"
        );
    }
}
