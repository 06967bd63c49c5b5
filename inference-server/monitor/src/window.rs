//! Time windows: which window of a granularity a timestamp falls in, and its neighbours.
//! Windows are UTC; weeks start on Monday; months are calendar months.

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use sluice_crds::Granularity;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
/// 1970-01-05, the first Monday of the epoch.
const FIRST_MONDAY_MS: i64 = 4 * DAY_MS;

fn fixed_length(granularity: Granularity) -> Option<i64> {
    match granularity {
        Granularity::FiveMinutes => Some(5 * MINUTE_MS),
        Granularity::ThirtyMinutes => Some(30 * MINUTE_MS),
        Granularity::Hour => Some(60 * MINUTE_MS),
        Granularity::Day => Some(DAY_MS),
        Granularity::Week => Some(7 * DAY_MS),
        Granularity::Month => None,
    }
}

fn month_start(ms: i64) -> Option<DateTime<Utc>> {
    let at = Utc.timestamp_millis_opt(ms).single()?;
    let first = NaiveDate::from_ymd_opt(at.year(), at.month(), 1)?;
    Some(Utc.from_utc_datetime(&first.and_hms_opt(0, 0, 0)?))
}

/// Start (ms since the epoch) of the window of `granularity` that holds `ms`.
pub fn start(granularity: Granularity, ms: i64) -> i64 {
    match fixed_length(granularity) {
        Some(length) => {
            let origin = if granularity == Granularity::Week {
                FIRST_MONDAY_MS
            } else {
                0
            };
            origin + (ms - origin).div_euclid(length) * length
        }
        None => month_start(ms).map_or(ms, |at| at.timestamp_millis()),
    }
}

/// Start of the window after the one starting at `window_start` (its end).
pub fn next(granularity: Granularity, window_start: i64) -> i64 {
    match fixed_length(granularity) {
        Some(length) => window_start + length,
        None => month_start(window_start)
            .and_then(|at| at.checked_add_months(Months::new(1)))
            .map_or(window_start, |at| at.timestamp_millis()),
    }
}

/// Start of the window before the one starting at `window_start`.
pub fn previous(granularity: Granularity, window_start: i64) -> i64 {
    match fixed_length(granularity) {
        Some(length) => window_start - length,
        None => month_start(window_start)
            .and_then(|at| at.checked_sub_months(Months::new(1)))
            .map_or(window_start, |at| at.timestamp_millis()),
    }
}

/// A short name of the granularity for folder names (`5m`, `1h`, `1mo`).
pub fn slug(granularity: Granularity) -> &'static str {
    match granularity {
        Granularity::FiveMinutes => "5m",
        Granularity::ThirtyMinutes => "30m",
        Granularity::Hour => "1h",
        Granularity::Day => "1d",
        Granularity::Week => "1w",
        Granularity::Month => "1mo",
    }
}

/// The file name of a window (`20261206T1005Z`), sortable by time.
pub fn file_stem(window_start: i64) -> String {
    Utc.timestamp_millis_opt(window_start).single().map_or_else(
        || window_start.to_string(),
        |at| at.format("%Y%m%dT%H%MZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn windows_of_each_granularity() {
        let at = ms("2026-12-06T10:07:31Z");
        assert_eq!(
            start(Granularity::FiveMinutes, at),
            ms("2026-12-06T10:05:00Z")
        );
        assert_eq!(
            start(Granularity::ThirtyMinutes, at),
            ms("2026-12-06T10:00:00Z")
        );
        assert_eq!(start(Granularity::Hour, at), ms("2026-12-06T10:00:00Z"));
        assert_eq!(start(Granularity::Day, at), ms("2026-12-06T00:00:00Z"));
        // 2026-12-06 is a Sunday: its week began on Monday the 30th of November.
        assert_eq!(start(Granularity::Week, at), ms("2026-11-30T00:00:00Z"));
        assert_eq!(start(Granularity::Month, at), ms("2026-12-01T00:00:00Z"));
        assert_eq!(
            next(Granularity::Month, ms("2026-12-01T00:00:00Z")),
            ms("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            previous(Granularity::Month, ms("2026-03-01T00:00:00Z")),
            ms("2026-02-01T00:00:00Z")
        );
        assert_eq!(
            next(Granularity::Hour, ms("2026-12-06T23:00:00Z")),
            ms("2026-12-07T00:00:00Z")
        );
        // Before the epoch too.
        assert_eq!(start(Granularity::Day, -1), -DAY_MS);
        assert_eq!(file_stem(ms("2026-12-06T10:05:00Z")), "20261206T1005Z");
    }

    #[test]
    fn every_timestamp_lies_in_its_window() {
        for granularity in Granularity::ALL {
            for at in [0, 1, 86_399_999, 1_733_480_000_123, -5_000_000] {
                let window = start(granularity, at);
                assert!(
                    window <= at && at < next(granularity, window),
                    "{granularity} {at}"
                );
                assert_eq!(previous(granularity, next(granularity, window)), window);
            }
        }
    }
}
