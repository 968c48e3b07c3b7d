//! Schedules: a cron expression read in a time zone (croner, on jiff's time zone database),
//! and the instants it names. Pure: the daemon's scheduler and `lifeboat schedule` use it,
//! `plan check` validates with it.
//!
//! Daylight saving time follows croner's documented rules (the Open Cron Pattern
//! Specification and Vixie cron): on the day clocks spring forward, a fixed time in the gap
//! (`30 2 * * *` in Europe/Berlin) runs at the first minute after it, and interval patterns
//! skip what falls in the gap; on the day they fall back, a fixed time runs once (its first
//! occurrence) and interval patterns run in both passes of the repeated hour.

use std::str::FromStr;

use croner::parser::{CronParser, Seconds};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::plan::Schedule;

/// A schedule ready to answer "when next" and "when last".
#[derive(Clone, Debug)]
pub struct Parsed {
    pub cron: croner::Cron,
    pub tz: TimeZone,
    /// The zone's name as written (`UTC` by default).
    pub tz_name: String,
}

/// Parse a schedule: five fields (or an `@` nickname) and a time zone jiff knows.
pub fn parse(s: &Schedule) -> Result<Parsed, String> {
    let text = s.cron().trim();
    let fields = text.split_whitespace().count();
    if !text.starts_with('@') && fields != 5 {
        return Err(format!(
            "schedule `{text}` has {fields} fields: expected 5 (`minute hour day-of-month month day-of-week`, e.g. `0 2 * * *`) or @daily"
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| {
            format!(
                "schedule `{text}`: {e} (expected `minute hour day-of-month month day-of-week` with numbers, names, ranges, steps, lists, `L`, `SAT#1`, or @hourly, @daily, @weekly, @monthly, @yearly)"
            )
        })?;
    let tz_name = s.time_zone().unwrap_or("UTC").to_string();
    let tz = TimeZone::get(&tz_name).map_err(|_| {
        format!("time zone `{tz_name}` is not known (use an IANA name such as `UTC` or `Europe/Berlin`)")
    })?;
    Ok(Parsed { cron, tz, tz_name })
}

impl FromStr for Parsed {
    type Err = String;
    fn from_str(s: &str) -> Result<Parsed, String> {
        parse(&Schedule::Cron(s.into()))
    }
}

impl Parsed {
    /// The first instant strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&z, false)
            .ok()
            .map(|n: Zoned| n.timestamp())
    }

    /// The last instant at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        self.cron
            .find_previous_occurrence(&z, true)
            .ok()
            .map(|n: Zoned| n.timestamp())
    }

    /// How many instants fall in (`after`, `until`], counting at most `cap`.
    pub fn count_between(&self, after: Timestamp, until: Timestamp, cap: u64) -> u64 {
        let mut n = 0;
        let mut t = after;
        while n < cap {
            match self.next_after(t) {
                Some(x) if x <= until => {
                    n += 1;
                    t = x;
                }
                _ => break,
            }
        }
        n
    }

    pub fn describe(&self) -> String {
        self.cron.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ScheduleSpec;

    fn zoned(cron: &str, tz: &str) -> Parsed {
        parse(&Schedule::Spec(ScheduleSpec {
            cron: cron.into(),
            time_zone: Some(tz.into()),
            jitter: None,
            catch_up: None,
        }))
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn five_fields_nicknames_names_and_nth_weekdays() {
        let p: Parsed = "0 2 * * *".parse().unwrap();
        assert_eq!(
            p.next_after(ts("2026-12-01T03:00:00Z")),
            Some(ts("2026-12-02T02:00:00Z"))
        );
        let d: Parsed = "@daily".parse().unwrap();
        assert_eq!(
            d.next_after(ts("2026-12-01T03:00:00Z")),
            Some(ts("2026-12-02T00:00:00Z"))
        );
        // The seeds' "Monthly DR drill: first Saturday 10 AM".
        let m: Parsed = "0 10 * * SAT#1".parse().unwrap();
        assert_eq!(
            m.next_after(ts("2026-12-01T00:00:00Z")),
            Some(ts("2026-12-05T10:00:00Z"))
        );
        assert_eq!(
            m.next_after(ts("2026-12-05T10:00:00Z")),
            Some(ts("2027-01-02T10:00:00Z"))
        );
        assert_eq!(
            m.last_at_or_before(ts("2026-12-05T10:00:00Z")),
            Some(ts("2026-12-05T10:00:00Z"))
        );
        assert_eq!(
            p.count_between(ts("2026-12-01T00:00:00Z"), ts("2026-12-04T12:00:00Z"), 100),
            4
        );
    }

    #[test]
    fn bad_expressions_and_zones_say_what_is_wrong() {
        assert!("0 2 * *"
            .parse::<Parsed>()
            .unwrap_err()
            .contains("4 fields"));
        assert!("0 0 2 * * *"
            .parse::<Parsed>()
            .unwrap_err()
            .contains("6 fields"));
        assert!("61 * * * *".parse::<Parsed>().is_err());
        assert!("@fortnightly".parse::<Parsed>().is_err());
        let e = parse(&Schedule::Spec(ScheduleSpec {
            cron: "0 2 * * *".into(),
            time_zone: Some("Mars/Olympus".into()),
            jitter: None,
            catch_up: None,
        }))
        .unwrap_err();
        assert!(e.contains("Mars/Olympus"), "{e}");
    }

    #[test]
    fn spring_forward_runs_a_time_in_the_gap_just_after_it() {
        // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
        let p = zoned("30 2 * * *", "Europe/Berlin");
        let day_before = p.next_after(ts("2026-03-28T00:00:00Z")).unwrap();
        assert_eq!(day_before, ts("2026-03-28T01:30:00Z"), "02:30 CET");
        let gap_day = p.next_after(day_before).unwrap();
        assert_eq!(gap_day, ts("2026-03-29T01:00:00Z"), "03:00 CEST, once");
        let after = p.next_after(gap_day).unwrap();
        assert_eq!(after, ts("2026-03-30T00:30:00Z"), "02:30 CEST");
        // An hourly pattern skips the missing hour: 01:00 CET, then 03:00 CEST.
        let h = zoned("0 * * * *", "Europe/Berlin");
        let one = h.next_after(ts("2026-03-28T23:30:00Z")).unwrap();
        assert_eq!(one, ts("2026-03-29T00:00:00Z"));
        assert_eq!(h.next_after(one).unwrap(), ts("2026-03-29T01:00:00Z"));
    }

    #[test]
    fn fall_back_runs_a_fixed_time_once_and_an_hourly_one_in_both_passes() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:30 happens
        // at 00:30 UTC and again at 01:30 UTC.
        let p = zoned("30 2 * * *", "Europe/Berlin");
        let first = p.next_after(ts("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, ts("2026-10-25T00:30:00Z"), "the first 02:30");
        let next = p.next_after(first).unwrap();
        assert_eq!(next, ts("2026-10-26T01:30:00Z"), "not the second 02:30");
        let h = zoned("15 * * * *", "Europe/Berlin");
        // From 00:30 CEST to 03:00 CET: 01:15 CEST, 02:15 CEST, then 02:15 CET again — three
        // runs where the wall clock shows two hours and a half.
        let runs = h.count_between(ts("2026-10-24T22:30:00Z"), ts("2026-10-25T02:00:00Z"), 10);
        assert_eq!(runs, 3);
    }
}
