//! Medians, percentiles and paired ratios. Samples are kept per round: a configuration is only
//! ever compared with its baseline measured in the same round, minutes apart at most.

pub fn median(v: &[f64]) -> Option<f64> {
    percentile(v, 50.0)
}

/// Nearest-rank percentile of the finite values of `v`.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    if (p - 50.0).abs() < f64::EPSILON && s.len().is_multiple_of(2) {
        let m = s.len() / 2;
        return Some((s[m - 1] + s[m]) / 2.0);
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    Some(s[rank.min(s.len()) - 1])
}

/// A configuration against its baseline.
#[derive(Clone, Debug, Default)]
pub struct Compared {
    /// Median of the configuration's samples.
    pub median: Option<f64>,
    /// Median over rounds of (sample / baseline sample of the same round).
    pub ratio: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    /// Rounds with both samples.
    pub pairs: usize,
}

/// `samples[i]` and `base[i]` come from round i; NaN marks a round without a sample.
pub fn compare(samples: &[f64], base: &[f64]) -> Compared {
    let ratios: Vec<f64> = samples
        .iter()
        .zip(base)
        .filter(|(s, b)| s.is_finite() && b.is_finite() && **b > 0.0)
        .map(|(s, b)| s / b)
        .collect();
    Compared {
        median: median(samples),
        ratio: median(&ratios),
        ratio_min: ratios.iter().copied().reduce(f64::min),
        ratio_max: ratios.iter().copied().reduce(f64::max),
        pairs: ratios.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
        assert_eq!(median(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
    }

    #[test]
    fn ratios_are_paired_by_round() {
        let c = compare(&[110.0, 220.0, f64::NAN], &[100.0, 200.0, 300.0]);
        assert_eq!(c.pairs, 2);
        assert!((c.ratio.unwrap() - 1.1).abs() < 1e-9);
        assert_eq!(c.median, Some(165.0));
    }
}
