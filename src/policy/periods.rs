//! Budget periods: the calendar day and month in `policy.timezone` (a zone found once, when the configuration is
//! loaded), keyed by date (no reset job to forget).

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// The periods `now` falls in, and when they end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Periods {
    /// `2026-11-25`
    pub day: String,
    /// `2026-11`
    pub month: String,
    pub secs_to_next_day: u64,
    pub secs_to_next_month: u64,
    /// Minutes after local midnight, for `immediate_hours`.
    pub minute_of_day: u16,
}

fn start_of(date: Date, tz: &TimeZone) -> Option<Timestamp> {
    date.to_zoned_datetime(tz.clone())
        .ok()
        .map(|z| z.timestamp())
}

pub fn periods(now: Timestamp, tz: &TimeZone) -> Periods {
    let zoned = now.to_zoned_datetime(tz.clone());
    let date = zoned.date();
    let until = |d: Option<Date>| -> u64 {
        d.and_then(|d| start_of(d, tz))
            .map(|t| (t - now).as_secs().max(1).unsigned_abs())
            .unwrap_or(86_400)
    };
    let next_month = date.first_of_month().checked_add(1.month()).ok();
    Periods {
        day: date.to_string(),
        month: format!("{:04}-{:02}", date.year(), date.month()),
        secs_to_next_day: until(date.tomorrow().ok()),
        secs_to_next_month: until(next_month),
        minute_of_day: u16::try_from(i32::from(zoned.hour()) * 60 + i32::from(zoned.minute()))
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn timezone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    #[test]
    fn the_day_is_the_local_calendar_day() {
        let tz = timezone("Asia/Shanghai"); // UTC+8
        let p = periods(at("2026-11-25T15:59:59Z"), &tz);
        assert_eq!(p.day, "2026-11-25");
        assert_eq!(p.secs_to_next_day, 1);
        let p = periods(at("2026-11-25T16:00:00Z"), &tz);
        assert_eq!(p.day, "2026-11-26");
        assert_eq!(p.minute_of_day, 0);
        assert_eq!(p.secs_to_next_day, 86_400);
    }

    #[test]
    fn the_month_rolls_over_at_local_midnight_of_the_first() {
        let tz = timezone("Asia/Shanghai");
        let p = periods(at("2026-11-30T15:00:00Z"), &tz);
        assert_eq!(p.month, "2026-11");
        assert_eq!(p.secs_to_next_month, 3600);
        let p = periods(at("2026-12-31T16:00:00Z"), &tz);
        assert_eq!(
            (p.day.as_str(), p.month.as_str()),
            ("2027-01-01", "2027-01")
        );
    }

    #[test]
    fn dst_days_are_calendar_days() {
        let tz = timezone("Europe/Berlin");
        // 2026-03-29 has 23 hours in Berlin.
        let p = periods(at("2026-03-28T23:00:00Z"), &tz);
        assert_eq!(p.day, "2026-03-29");
        assert_eq!(p.secs_to_next_day, 23 * 3600);
    }
}
