//! The alert lane's kernel side as the daemon sees it: the per-container budget it writes
//! (`ALERT_BUDGET`), and the refusals the kernel counted instead of sending one by one
//! (`ALERT_AGG`, `ALERT_OVERFLOW`), drained once a second into aggregated alerts.
//!
//! Exact counting by epochs: the kernel keys each count by `ALERT_EPOCH`. At each tick the
//! daemon drains the entries of every epoch but the current one (those no program has
//! written for at least a tick), deletes them, and only then advances the epoch. An entry is
//! therefore never written between its read and its delete, and every refusal over budget is
//! in exactly one report. When `ALERT_AGG` is full, the kernel counts in `ALERT_OVERFLOW`
//! (per refusal kind, cumulative); the daemon reports its increase.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuHashMap, PerCpuValues},
};
use sidewall_common::{AggCount, AggKey, AlertBudget, refusal};

use super::counters::{PerCpuTotals, REFUSALS};

/// Destinations kept as the sample of an aggregated alert.
pub const SAMPLE: usize = 8;

/// Refusals of one kind by one container, counted over budget in one drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub cgroup: u64,
    /// `refusal::*`.
    pub kind: u32,
    pub count: u64,
    /// Boot-time ns of the first and last refusal counted.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Up to `SAMPLE` destinations, the most refused first: (address, port); the address is
    /// None for a bind (only the port is known) and a sysctl write.
    pub sample: Vec<(Option<IpAddr>, u16)>,
}

/// Folds the per-CPU counts of drained entries into one aggregate per (container, kind).
pub fn fold(entries: impl IntoIterator<Item = (AggKey, Vec<AggCount>)>) -> Vec<Aggregate> {
    struct Acc {
        count: u64,
        first_ns: u64,
        last_ns: u64,
        destinations: BTreeMap<(Option<IpAddr>, u16), u64>,
    }
    let mut groups: BTreeMap<(u64, u32), Acc> = BTreeMap::new();
    for (key, cpus) in entries {
        let counted: Vec<_> = cpus.into_iter().filter(|c| c.count > 0).collect();
        let count: u64 = counted.iter().map(|c| c.count).sum();
        if count == 0 {
            continue;
        }
        let first = counted.iter().map(|c| c.first_ns).min().unwrap_or(0);
        let last = counted.iter().map(|c| c.last_ns).max().unwrap_or(0);
        let acc = groups.entry((key.cgroup, u32::from(key.kind))).or_insert(Acc {
            count: 0,
            first_ns: u64::MAX,
            last_ns: 0,
            destinations: BTreeMap::new(),
        });
        acc.count += count;
        acc.first_ns = acc.first_ns.min(first);
        acc.last_ns = acc.last_ns.max(last);
        *acc.destinations.entry(destination(&key)).or_default() += count;
    }
    groups
        .into_iter()
        .map(|((cgroup, kind), acc)| {
            let mut dests: Vec<_> = acc.destinations.into_iter().collect();
            dests.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            Aggregate {
                cgroup,
                kind,
                count: acc.count,
                first_ns: acc.first_ns,
                last_ns: acc.last_ns,
                sample: dests.into_iter().take(SAMPLE).map(|(d, _)| d).collect(),
            }
        })
        .collect()
}

/// The destination of a key: an IPv4 address sits in the first four bytes (the rest zero),
/// as the programs write it; connect and send keys carry one, bind keys only a port.
fn destination(key: &AggKey) -> (Option<IpAddr>, u16) {
    let kind = u32::from(key.kind);
    if kind != refusal::CONNECT && kind != refusal::SEND {
        return (None, key.port);
    }
    let a = key.addr;
    let ip =
        if a[4..].iter().all(|b| *b == 0) { IpAddr::from([a[0], a[1], a[2], a[3]]) } else { IpAddr::from(a) };
    (Some(ip), key.port)
}

/// "ip:port" ("[ip]:port" for IPv6), or ":port" when only the port is known.
pub fn sample_name(d: &(Option<IpAddr>, u16)) -> String {
    match d {
        (Some(IpAddr::V6(ip)), port) if ip.to_ipv4_mapped().is_none() => format!("[{ip}]:{port}"),
        (Some(ip), port) => format!("{}:{port}", ip.to_canonical()),
        (None, port) => format!(":{port}"),
    }
}

/// New overflow counts since `reported` (updated), by refusal kind.
pub fn overflow_delta(totals: &[u64; REFUSALS], reported: &mut [u64; REFUSALS]) -> [u64; REFUSALS] {
    let mut out = [0; REFUSALS];
    for (k, (now, seen)) in totals.iter().zip(reported.iter_mut()).enumerate() {
        out[k] = now.saturating_sub(*seen);
        *seen = *now;
    }
    out
}

/// What one drain found.
#[derive(Debug, Default)]
pub struct Drained {
    pub aggregates: Vec<Aggregate>,
    /// Refusals over budget that found the aggregation map full, by refusal kind.
    pub overflow: [u64; REFUSALS],
}

/// The daemon's handle on the lane's maps.
pub struct AlertLane {
    agg: PerCpuHashMap<MapData, AggKey, AggCount>,
    epoch: Array<MapData, u32>,
    overflow: PerCpuTotals<REFUSALS>,
    current: u32,
    overflow_reported: [u64; REFUSALS],
}

impl AlertLane {
    /// Takes the maps and writes the budget (`rate == 0`: none).
    pub fn take(ebpf: &mut Ebpf, budget: AlertBudget) -> anyhow::Result<Self> {
        let map = ebpf.take_map("ALERT_BUDGET").context("map ALERT_BUDGET missing")?;
        let mut b: Array<MapData, AlertBudget> =
            Array::try_from(map).context("ALERT_BUDGET is not an array")?;
        b.set(0, budget, 0).context("writing ALERT_BUDGET")?;
        let map = ebpf.take_map("ALERT_EPOCH").context("map ALERT_EPOCH missing")?;
        let epoch: Array<MapData, u32> = Array::try_from(map).context("ALERT_EPOCH is not an array")?;
        let current = epoch.get(&0, 0).context("reading ALERT_EPOCH")?;
        let map = ebpf.take_map("ALERT_AGG").context("map ALERT_AGG missing")?;
        let agg = PerCpuHashMap::try_from(map).context("ALERT_AGG is not a per-CPU hash")?;
        let overflow = PerCpuTotals::take(ebpf, "ALERT_OVERFLOW")?;
        // Counts from before this daemon (none: the lane's maps are not pinned) start at zero.
        let overflow_reported = overflow.totals();
        Ok(Self { agg, epoch, overflow, current, overflow_reported })
    }

    /// Drains every closed epoch, then opens the next one.
    pub fn drain(&mut self) -> Drained {
        let keys: Vec<AggKey> =
            self.agg.keys().filter_map(Result::ok).filter(|k| k.epoch != self.current).collect();
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            let values: Option<PerCpuValues<AggCount>> = self.agg.get(&key, 0).ok();
            if let Some(values) = values {
                entries.push((key, values.iter().copied().collect::<Vec<_>>()));
            }
            if let Err(e) = self.agg.remove(&key) {
                tracing::warn!(error = %e, "removing a drained ALERT_AGG entry");
            }
        }
        let next = self.current.wrapping_add(1);
        match self.epoch.set(0, next, 0) {
            Ok(()) => self.current = next,
            Err(e) => tracing::warn!(error = %e, "advancing ALERT_EPOCH"),
        }
        let overflow = overflow_delta(&self.overflow.totals(), &mut self.overflow_reported);
        Drained { aggregates: fold(entries), overflow }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cgroup: u64, kind: u32, ip: [u8; 4], port: u16) -> AggKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&ip);
        AggKey { cgroup, addr, epoch: 3, kind: kind as u16, port }
    }

    fn cpu(count: u64, first_ns: u64, last_ns: u64) -> AggCount {
        AggCount { count, first_ns, last_ns }
    }

    #[test]
    fn per_cpu_counts_sum_exactly_per_container_and_kind() {
        let send = refusal::SEND;
        let entries = vec![
            // CPU 1 never counted this key: its zeroed slot must not pull first_ns to 0.
            (key(7, send, [127, 0, 0, 1], 9000), vec![cpu(5, 100, 200), cpu(0, 0, 0), cpu(3, 50, 300)]),
            (key(7, send, [127, 0, 0, 1], 9001), vec![cpu(1, 400, 400)]),
            (key(7, refusal::BIND, [0; 4], 8080), vec![cpu(2, 10, 20)]),
            (key(8, send, [127, 0, 0, 1], 9000), vec![cpu(4, 1, 2)]),
        ];
        let out = fold(entries);
        assert_eq!(out.len(), 3);
        let a = out.iter().find(|a| a.cgroup == 7 && a.kind == send).expect("7/send");
        assert_eq!((a.count, a.first_ns, a.last_ns), (9, 50, 400));
        // Most refused destination first.
        assert_eq!(
            a.sample.iter().map(sample_name).collect::<Vec<_>>(),
            ["127.0.0.1:9000", "127.0.0.1:9001"]
        );
        let b = out.iter().find(|a| a.cgroup == 7 && a.kind == refusal::BIND).expect("7/bind");
        assert_eq!(
            (b.count, b.sample.iter().map(sample_name).collect::<Vec<_>>()),
            (2, vec![":8080".into()])
        );
        let c = out.iter().find(|a| a.cgroup == 8).expect("8");
        assert_eq!(c.count, 4);
        assert_eq!(out.iter().map(|a| a.count).sum::<u64>(), 15);
    }

    #[test]
    fn sample_is_bounded_but_count_is_not() {
        let entries: Vec<_> = (0..20u16)
            .map(|p| (key(1, refusal::CONNECT, [10, 0, 0, 1], 1000 + p), vec![cpu(1, 1, 1)]))
            .collect();
        let out = fold(entries);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].count, out[0].sample.len()), (20, SAMPLE));
    }

    #[test]
    fn empty_entries_make_no_alert() {
        assert!(fold(vec![(key(1, refusal::SEND, [1, 2, 3, 4], 5), vec![cpu(0, 0, 0)])]).is_empty());
    }

    #[test]
    fn ipv6_destinations_are_named_in_brackets() {
        let mut k = key(1, refusal::CONNECT, [0; 4], 443);
        k.addr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let out = fold(vec![(k, vec![cpu(1, 1, 1)])]);
        assert_eq!(sample_name(&out[0].sample[0]), "[fd00::1]:443");
    }

    #[test]
    fn overflow_reports_increases_only() {
        let mut seen = [0u64; REFUSALS];
        let mut totals = [0u64; REFUSALS];
        totals[refusal::SEND as usize] = 10;
        assert_eq!(overflow_delta(&totals, &mut seen)[refusal::SEND as usize], 10);
        assert_eq!(overflow_delta(&totals, &mut seen)[refusal::SEND as usize], 0);
        totals[refusal::SEND as usize] = 13;
        assert_eq!(overflow_delta(&totals, &mut seen)[refusal::SEND as usize], 3);
    }
}
