//! IMDSv1 usage as CloudWatch reports it: `MetadataNoToken` per period (5 minutes, or an hour
//! for windows older than CloudWatch's 5-minute retention), and the part of it that counts
//! against an instance once its boot window is over.

use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// Tokenless calls per period: each point is a period's start (Unix seconds) and its sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageSeries {
    /// The length of every period, in seconds.
    pub period_secs: u64,
    /// `(period start, calls)`, in any order; periods without calls may be absent.
    pub points: Vec<(i64, f64)>,
}

impl UsageSeries {
    /// A series of one period at `start` (tests, and reads that give one sum).
    pub fn single(period_secs: u64, start: i64, calls: f64) -> UsageSeries {
        UsageSeries {
            period_secs,
            points: vec![(start, calls)],
        }
    }

    /// Every call in the series.
    pub fn total(&self) -> f64 {
        self.points.iter().map(|(_, calls)| calls).sum()
    }

    /// The calls of the periods that end after `boundary`: a period that straddles it counts
    /// whole (its calls may have come after it), so nothing after the boundary is missed.
    pub fn after(&self, boundary: Timestamp) -> f64 {
        let period = i64::try_from(self.period_secs).unwrap_or(i64::MAX);
        self.points
            .iter()
            .filter(|(start, _)| start.saturating_add(period) > boundary.as_second())
            .map(|(_, calls)| calls)
            .sum()
    }

    /// The calls that count against an instance launched at `launched` whose first
    /// `boot_window` is not judged (tokenless calls at first boot, e.g. the VPC CNI's first
    /// start, are expected); all of them when the launch time is unknown or the window is 0.
    pub fn after_boot(&self, launched: Option<Timestamp>, boot_window: Duration) -> f64 {
        if boot_window.is_zero() {
            return self.total();
        }
        let boot_window = i64::try_from(boot_window.as_secs()).unwrap_or(i64::MAX);
        match launched.and_then(|t| Timestamp::from_second(t.as_second().saturating_add(boot_window)).ok()) {
            Some(boundary) => self.after(boundary),
            None => self.total(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("a valid time")
    }

    #[test]
    fn calls_in_the_boot_window_do_not_count() {
        let launch = 1_000_000 * 300; // on a period boundary
        let ten = Duration::from_secs(600);
        // (series, launch time, calls counted, why)
        /// (points, launch time, calls counted, why)
        type Case = (Vec<(i64, f64)>, Option<i64>, f64, &'static str);
        let cases: Vec<Case> = vec![
            (vec![], Some(launch), 0.0, "no calls"),
            (
                vec![(launch, 3.0), (launch + 5 * MIN, 2.0)],
                Some(launch),
                0.0,
                "only in the first 10 minutes",
            ),
            (
                vec![(launch, 3.0), (launch + 10 * MIN, 1.0)],
                Some(launch),
                1.0,
                "one after the window",
            ),
            (vec![(launch, 3.0)], None, 3.0, "launch time unknown: all of it counts"),
            (
                vec![(launch - 60 * MIN, 7.0), (launch + 5 * MIN, 2.0)],
                Some(launch - 120 * MIN),
                9.0,
                "an old instance",
            ),
            (
                vec![(launch + 7 * MIN, 4.0)],
                Some(launch),
                4.0,
                "a period straddling the boundary counts",
            ),
            (
                vec![(launch + 10 * MIN, 4.0)],
                Some(launch + 2 * MIN),
                4.0,
                "launch mid-period: the period ending after launch+12m counts",
            ),
            (
                vec![(launch + 5 * MIN, 4.0)],
                Some(launch + 2 * MIN),
                0.0,
                "a period ending before launch+12m does not",
            ),
        ];
        for (points, launched, want, why) in cases {
            let series = UsageSeries {
                period_secs: 300,
                points,
            };
            assert_eq!(series.after_boot(launched.map(at), ten), want, "{why}");
        }
        let series = UsageSeries::single(300, launch, 5.0);
        assert_eq!(
            series.after_boot(Some(at(launch)), Duration::ZERO),
            5.0,
            "no boot window"
        );
        let before_launch = UsageSeries::single(300, launch - 600, 2.0);
        assert_eq!(
            before_launch.after_boot(Some(at(launch)), Duration::ZERO),
            2.0,
            "0s judges every call"
        );
        assert_eq!(series.total(), 5.0);
    }
}
