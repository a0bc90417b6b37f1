//! Times as the pages print them: UTC dates from Unix milliseconds and ages in words, both pure, so that a test
//! with a fixed clock sees fixed pages.

use std::sync::Arc;

/// The dashboard's clock: Unix milliseconds now. Injected, so that snapshot tests see fixed ages.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    })
}

/// `ms` as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// How long before `now_ms` the moment `ms` was, in the largest whole unit: "42 s", "3 min", "5 h", "2 days";
/// "in the future" for a moment after now (a skewed clock).
pub fn age(ms: u64, now_ms: u64) -> String {
    let Some(elapsed) = now_ms.checked_sub(ms) else { return "in the future".into() };
    let seconds = elapsed / 1000;
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h", seconds / 3600),
        _ => match seconds / 86_400 {
            1 => "1 day".into(),
            days => format!("{days} days"),
        },
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_767_225_599_000), "2025-12-31 23:59:59 UTC");
        assert_eq!(utc(1_767_225_600_000), "2026-01-01 00:00:00 UTC");
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let now = 1_000_000_000;
        assert_eq!(age(now - 42_000, now), "42 s");
        assert_eq!(age(now - 3 * 60_000 - 59_000, now), "3 min");
        assert_eq!(age(now - 5 * 3_600_000, now), "5 h");
        assert_eq!(age(now - 86_400_000, now), "1 day");
        assert_eq!(age(now - 3 * 86_400_000, now), "3 days");
        assert_eq!(age(now + 1, now), "in the future");
    }
}
