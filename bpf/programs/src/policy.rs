//! In-kernel enforcement: per-cgroup (per-container) flags and allow lists, compiled by the
//! daemon from the policies. Every lookup is O(1) in the number of rules (hash maps, and an
//! LPM trie bounded by the address length).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, lpm_trie::Key},
};
use sidewall_common::{CgroupAddr, PortKey, UNIX_PATH_MAX, destination, enforce};

/// `BPF_NOEXIST` (include/uapi/linux/bpf.h): insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

#[map]
pub static ENFORCE: HashMap<u64, u32> = HashMap::with_max_entries(65536, 0);
#[map]
pub static CONNECT_ALLOW: HashMap<PortKey, u8> = HashMap::with_max_entries(262144, 0);
#[map]
pub static BIND_ALLOW: HashMap<PortKey, u8> = HashMap::with_max_entries(262144, 0);
/// Processes seen inside their container's own namespaces (and their descendants): only these
/// can be killed for a namespace change, so the runtime's own setup (runc init, which creates
/// and joins the container's namespaces from inside its cgroup) is never hit.
#[map]
pub static ARMED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(65536, 0);
/// The unix socket paths of container runtimes (zero-padded), filled by the daemon.
#[map]
pub static RUNTIME_SOCKETS: HashMap<[u8; UNIX_PATH_MAX], u8> = HashMap::with_max_entries(64, 0);

/// The pod's own addresses (besides loopback) per enforced container, as ::ffff:a.b.c.d or
/// IPv6: traffic to them stays in the pod, and loopback rules apply to it.
#[map]
pub static LOCAL_ADDRS: HashMap<CgroupAddr, u8> = HashMap::with_max_entries(65536, 0);
#[map]
pub static EGRESS_ALLOW: LpmTrie<CgroupAddr, u8> = LpmTrie::with_max_entries(65536, 0);

#[inline(always)]
pub fn flags(cgroup_id: u64) -> u32 {
    // SAFETY: a copy out of our own map.
    unsafe { ENFORCE.get(&cgroup_id) }.copied().unwrap_or(0)
}

fn port_allowed(map: &HashMap<PortKey, u8>, cgroup_id: u64, port: u16) -> bool {
    let key = PortKey { cgroup_id, port, _pad: [0; 6] };
    // SAFETY: read-only lookup in our own map.
    unsafe { map.get(&key) }.is_some()
}

/// Whether a connect or send from `cgroup_id` to `addr:port` is denied (`addr` as the hook
/// gives it: IPv4 in the first four bytes when `v4`). The decision is the one the daemon
/// makes too (`sidewall_common::destination`); the lookups are in the maps above: the pod's
/// own addresses in `LOCAL_ADDRS`, loopback ports in `CONNECT_ALLOW`, egress ranges in
/// `EGRESS_ALLOW`.
#[inline(always)]
pub fn deny_destination(cgroup_id: u64, addr: &[u8; 16], v4: bool, port: u16) -> bool {
    let f = flags(cgroup_id);
    if f == 0 {
        return false;
    }
    let v6 = destination::mapped(addr, v4);
    destination::denies(
        f,
        &v6,
        port,
        // SAFETY: read-only lookup in our own map.
        |a| unsafe { LOCAL_ADDRS.get(&CgroupAddr { cgroup_id, addr: *a }) }.is_some(),
        |p| port_allowed(&CONNECT_ALLOW, cgroup_id, p),
        |a| EGRESS_ALLOW.get(&Key::new(64 + 128, CgroupAddr { cgroup_id, addr: *a })).is_some(),
    )
}

#[inline(always)]
pub fn deny_bind(cgroup_id: u64, port: u16) -> bool {
    flags(cgroup_id) & enforce::BIND != 0 && !port_allowed(&BIND_ALLOW, cgroup_id, port)
}

#[inline(always)]
pub fn kill_namespace_change(cgroup_id: u64, tgid: u32) -> bool {
    // SAFETY: read-only lookup in our own map.
    flags(cgroup_id) & enforce::KILL_NAMESPACE != 0 && unsafe { ARMED.get(&tgid) }.is_some()
}

/// Whether a unix connect to `path` (zero-padded) kills the caller: a runtime's socket, from
/// a container whose rule kills for it, by a process seen inside its container.
#[inline(always)]
pub fn kill_runtime_socket(cgroup_id: u64, tgid: u32, path: &[u8; UNIX_PATH_MAX]) -> bool {
    flags(cgroup_id) & enforce::KILL_RUNTIME_SOCKET != 0
        // SAFETY: read-only lookups in our own maps.
        && unsafe { ARMED.get(&tgid) }.is_some()
        && unsafe { RUNTIME_SOCKETS.get(path) }.is_some()
}

/// The mount namespace each container's processes live in: learned by the kernel at the
/// container's entry (see `arm_at_home`), or by the daemon from its first process. An exec
/// into it arms the process at once (`podman exec`/`kubectl exec` of an attack, say).
#[map]
pub static HOME_MNT: HashMap<u64, u32> = HashMap::with_max_entries(65536, 0);

/// The other way round: the container (cgroup) whose home each mount namespace is, so that a
/// file opened through another container's mounts names that container.
#[map]
pub static MNT_OWNER: HashMap<u32, u64> = HashMap::with_max_entries(65536, 0);

/// The container whose home mount namespace `mnt` is (0: none known).
#[inline(always)]
pub fn mnt_owner(mnt: u32) -> u64 {
    // SAFETY: a copy out of our own map.
    unsafe { MNT_OWNER.get(&mnt) }.copied().unwrap_or(0)
}

/// Arms a process at its exec into its container's own mount namespace. The container's home
/// is learned here too, with no daemon in the loop: the first exec in a cgroup into a mount
/// namespace its parent does not share is the runtime starting the entry point (the runtime's
/// init process execs it once inside the container's namespaces; before that it ran with the
/// runtime's mounts), so the entry point is armed before its first instruction.
#[inline(always)]
pub fn arm_at_home(cgroup_id: u64, tgid: u32, mnt: u32, parent_mnt: u32) {
    if mnt == 0 {
        return;
    }
    // SAFETY: read-only lookup in our own map.
    let home = match unsafe { HOME_MNT.get(&cgroup_id) } {
        Some(home) => *home,
        // The root cgroup is the host's, never a container.
        None if cgroup_id > 1 && parent_mnt != 0 && parent_mnt != mnt => {
            // BPF_NOEXIST: of two racing first execs of one container, the first one sets it.
            if HOME_MNT.insert(&cgroup_id, &mnt, BPF_NOEXIST).is_ok() {
                let _ = MNT_OWNER.insert(&mnt, &cgroup_id, 0);
            }
            mnt
        }
        None => return,
    };
    if home == mnt {
        let _ = ARMED.insert(&tgid, &1, 0);
    }
}

/// A cgroup is gone: so is its home (the daemon may be down to say so).
#[inline(always)]
pub fn forget_cgroup(cgroup_id: u64) {
    // SAFETY: a copy out of our own map.
    if let Some(mnt) = unsafe { HOME_MNT.get(&cgroup_id) }.copied() {
        let _ = MNT_OWNER.remove(&mnt);
    }
    let _ = HOME_MNT.remove(&cgroup_id);
}

/// Whether opening a process's secrets (`target_cgroup`: the cgroup it lives in) kills the
/// caller: another container's, from a container whose rule kills for it, by an armed process.
#[inline(always)]
pub fn kill_access(cgroup_id: u64, tgid: u32, target_cgroup: u64) -> bool {
    // An unknown cgroup (0) is not known to be another container's: no kill on a guess.
    target_cgroup != 0
        && target_cgroup != cgroup_id
        && flags(cgroup_id) & enforce::KILL_ACCESS != 0
        // SAFETY: read-only lookup in our own map.
        && unsafe { ARMED.get(&tgid) }.is_some()
}

/// A child of an armed process is armed from its first instruction.
#[inline(always)]
pub fn inherit_armed(parent: u32, child: u32) {
    // SAFETY: read-only lookup in our own map.
    if unsafe { ARMED.get(&parent) }.is_some() {
        let _ = ARMED.insert(&child, &1, 0);
    }
}

#[inline(always)]
pub fn disarm(tgid: u32) {
    let _ = ARMED.remove(&tgid);
}
