//! Report periods and working hours, in Vietnam time (UTC+7, no daylight
//! saving). The schema stores Unix microseconds; every day boundary here is
//! midnight in Vietnam.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, Time, UtcOffset, Weekday};

use crate::error::{Error, Reason, Result};

/// Vietnam's offset: UTC+7 all year.
pub const VIETNAM: UtcOffset = match UtcOffset::from_hms(7, 0, 0) {
    Ok(o) => o,
    Err(_) => UtcOffset::UTC,
};

/// The longest range a report covers (ten years): enough for any real
/// question, and it keeps the date arithmetic far from its limits.
const MAX_RANGE_DAYS: i64 = 3660;

/// Unix microseconds of local midnight at the start of `d`.
pub fn day_start_micros(d: Date) -> i64 {
    let t = d.midnight().assume_offset(VIETNAM).unix_timestamp_nanos();
    (t / 1000) as i64
}

/// The Vietnam date and time of a Unix-microsecond instant.
pub fn local(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(VIETNAM)
}

/// The Vietnam date of an instant.
pub fn local_date(micros: i64) -> Date {
    local(micros).date()
}

/// `2026-11-24 09:05:03` (Vietnam time).
pub fn format_local(micros: i64) -> String {
    let t = local(micros);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `2026-11-24T09:05:03+07:00`.
pub fn format_rfc3339(micros: i64) -> String {
    format_local(micros).replacen(' ', "T", 1) + "+07:00"
}

pub fn iso_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

/// What a report covers: a day, a month, a quarter, a year, or a range of
/// days (both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day(Date),
    Month(i32, Month),
    Quarter(i32, u8),
    Year(i32),
    Range(Date, Date),
}

const PERIOD_FORMS: &str = "a day (2026-11-24), a month (2026-11), a quarter (2026-Q4), a year \
     (2026) or a range of days (2026-11-01..2026-11-15)";

impl Period {
    /// Reads `2026-11-24`, `2026-11`, `2026-Q4`, `2026` or `FROM..TO`.
    pub fn parse(s: &str) -> Result<Period> {
        let t = s.trim();
        let bad = |why: &str| {
            Error::new(
                Reason::Malformed,
                format!(
                    "the period {:?} is not valid{why}; write {PERIOD_FORMS}",
                    crate::text::truncate(t, 40)
                ),
            )
        };
        if t.is_empty() {
            return Err(bad(" (it is empty)"));
        }
        if let Some((a, b)) = t.split_once("..") {
            let from = parse_date(a.trim()).ok_or_else(|| bad(": the start is not a date"))?;
            let to = parse_date(b.trim()).ok_or_else(|| bad(": the end is not a date"))?;
            if to < from {
                return Err(bad(": it ends before it starts"));
            }
            if (to - from).whole_days() > MAX_RANGE_DAYS {
                return Err(bad(": it is longer than ten years"));
            }
            return Ok(Period::Range(from, to));
        }
        if t.contains('/') {
            return parse_date(t)
                .map(Period::Day)
                .ok_or_else(|| bad(": no such date"));
        }
        let parts: Vec<&str> = t.split('-').collect();
        let year = |y: &str| -> Option<i32> {
            (y.len() == 4 && y.bytes().all(|c| c.is_ascii_digit()))
                .then(|| y.parse().ok())
                .flatten()
                .filter(|y| (1970..=9998).contains(y))
        };
        match parts.as_slice() {
            [y] => year(y).map(Period::Year).ok_or_else(|| bad("")),
            [y, q] if q.starts_with(['Q', 'q']) => {
                let y = year(y).ok_or_else(|| bad(": the year is not four digits"))?;
                match &q[1..] {
                    "1" => Ok(Period::Quarter(y, 1)),
                    "2" => Ok(Period::Quarter(y, 2)),
                    "3" => Ok(Period::Quarter(y, 3)),
                    "4" => Ok(Period::Quarter(y, 4)),
                    _ => Err(bad(": a quarter is Q1 to Q4")),
                }
            }
            [y, m] => {
                let y = year(y).ok_or_else(|| bad(": the year is not four digits"))?;
                let m = two_digits(m)
                    .and_then(|m| Month::try_from(m).ok())
                    .ok_or_else(|| bad(": the month is not 01 to 12"))?;
                Ok(Period::Month(y, m))
            }
            [_, _, _] => parse_date(t)
                .map(Period::Day)
                .ok_or_else(|| bad(": no such date")),
            _ => Err(bad("")),
        }
    }

    /// The month before the one `micros` falls in (Vietnam time).
    pub fn previous_month(micros: i64) -> Period {
        let d = local_date(micros);
        match d.month() {
            Month::January => Period::Month(d.year() - 1, Month::December),
            m => Period::Month(d.year(), m.previous()),
        }
    }

    /// The day `micros` falls in.
    pub fn day_of(micros: i64) -> Period {
        Period::Day(local_date(micros))
    }

    /// The month `micros` falls in.
    pub fn month_of(micros: i64) -> Period {
        let d = local_date(micros);
        Period::Month(d.year(), d.month())
    }

    /// First and last day, both included.
    pub fn days(&self) -> (Date, Date) {
        let ymd = |y: i32, m: Month, d: u8| Date::from_calendar_date(y, m, d).unwrap_or(Date::MIN);
        match *self {
            Period::Day(d) => (d, d),
            Period::Month(y, m) => (ymd(y, m, 1), ymd(y, m, m.length(y))),
            Period::Quarter(y, q) => {
                let first = Month::try_from((q - 1) * 3 + 1).unwrap_or(Month::January);
                let last = Month::try_from(q * 3).unwrap_or(Month::December);
                (ymd(y, first, 1), ymd(y, last, last.length(y)))
            }
            Period::Year(y) => (ymd(y, Month::January, 1), ymd(y, Month::December, 31)),
            Period::Range(a, b) => (a, b),
        }
    }

    /// `[start, end)` in Unix microseconds.
    pub fn bounds(&self) -> (i64, i64) {
        let (a, b) = self.days();
        let end = match b.next_day() {
            Some(n) => day_start_micros(n),
            None => i64::MAX,
        };
        (day_start_micros(a), end)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Period::Day(d) => f.write_str(&iso_date(d)),
            Period::Month(y, m) => write!(f, "{y:04}-{:02}", m as u8),
            Period::Quarter(y, q) => write!(f, "{y:04}-Q{q}"),
            Period::Year(y) => write!(f, "{y:04}"),
            Period::Range(a, b) => write!(f, "{}..{}", iso_date(a), iso_date(b)),
        }
    }
}

fn two_digits(s: &str) -> Option<u8> {
    (s.len() == 2 && s.bytes().all(|c| c.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `yyyy-MM-dd` (also `yyyy/MM/dd`, as edXML writes dates).
pub fn parse_date(s: &str) -> Option<Date> {
    let s = s.trim();
    let sep = if s.contains('/') { '/' } else { '-' };
    let mut it = s.split(sep);
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || y.len() != 4 || !y.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let y: i32 = y.parse().ok()?;
    let m = Month::try_from(two_digits(m)?).ok()?;
    let d = two_digits(d)?;
    if !(1970..=9998).contains(&y) {
        return None;
    }
    Date::from_calendar_date(y, m, d).ok()
}

/// `HH:MM`.
fn parse_hm(s: &str) -> Option<Time> {
    let (h, m) = s.trim().split_once(':')?;
    let h: u8 = h.parse().ok()?;
    let m: u8 = m.parse().ok()?;
    Time::from_hms(h, m, 0).ok()
}

/// The office's working hours: which weekdays, from when to when, and the
/// public holidays to skip. Used for "still without a 03 after N working
/// hours".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkingHours {
    /// `HH:MM`, Vietnam time.
    pub start: String,
    /// `HH:MM`, Vietnam time.
    pub end: String,
    /// Weekday names (`mon` … `sun`).
    pub days: Vec<String>,
    /// Dates (`yyyy-MM-dd`) that are not working days.
    pub holidays: Vec<String>,
    /// A holiday calendar file: one date (`yyyy-MM-dd`) per line, anything
    /// after it and lines starting with `#` are comments. Read at start,
    /// added to `holidays`.
    pub holidays_file: Option<std::path::PathBuf>,
}

impl Default for WorkingHours {
    fn default() -> Self {
        WorkingHours {
            start: "07:30".to_owned(),
            end: "17:00".to_owned(),
            days: ["mon", "tue", "wed", "thu", "fri"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            holidays: Vec::new(),
            holidays_file: None,
        }
    }
}

/// [`WorkingHours`], checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingCalendar {
    start: Time,
    end: Time,
    days: [bool; 7],
    holidays: BTreeSet<Date>,
}

impl WorkingHours {
    /// Checks the configuration; the error says which value is wrong.
    /// `holidays_file` is the text of the file [`WorkingHours::holidays_file`]
    /// names: the caller reads it, as this crate does no I/O.
    pub fn calendar(&self, holidays_file: Option<&str>) -> Result<WorkingCalendar> {
        let bad = |what: String| Error::new(Reason::Malformed, what);
        let start = parse_hm(&self.start).ok_or_else(|| {
            bad(format!(
                "reports.working_hours.start {:?} is not a time of day (HH:MM)",
                self.start
            ))
        })?;
        let end = parse_hm(&self.end).ok_or_else(|| {
            bad(format!(
                "reports.working_hours.end {:?} is not a time of day (HH:MM)",
                self.end
            ))
        })?;
        if end <= start {
            return Err(bad(format!(
                "reports.working_hours: the working day ends ({}) before it starts ({})",
                self.end, self.start
            )));
        }
        let mut days = [false; 7];
        for d in &self.days {
            let i = match d.trim().to_ascii_lowercase().get(..3) {
                Some("mon") => 0,
                Some("tue") => 1,
                Some("wed") => 2,
                Some("thu") => 3,
                Some("fri") => 4,
                Some("sat") => 5,
                Some("sun") => 6,
                _ => {
                    return Err(bad(format!(
                        "reports.working_hours.days: {d:?} is not a weekday (mon, tue, wed, thu, fri, sat, sun)"
                    )));
                }
            };
            days[i] = true;
        }
        if !days.iter().any(|d| *d) {
            return Err(bad(
                "reports.working_hours.days names no working day".to_owned()
            ));
        }
        let mut holidays = BTreeSet::new();
        if let Some(text) = holidays_file {
            let path = self
                .holidays_file
                .as_deref()
                .unwrap_or(Path::new("holidays file"));
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let date = line.split_whitespace().next().unwrap_or_default();
                let d = parse_date(date).ok_or_else(|| {
                    bad(format!(
                        "{} line {}: {date:?} is not a date (yyyy-MM-dd)",
                        path.display(),
                        i + 1
                    ))
                })?;
                holidays.insert(d);
            }
        }
        for h in &self.holidays {
            let d = parse_date(h).ok_or_else(|| {
                bad(format!(
                    "reports.working_hours.holidays: {h:?} is not a date (yyyy-MM-dd)"
                ))
            })?;
            holidays.insert(d);
        }
        Ok(WorkingCalendar {
            start,
            end,
            days,
            holidays,
        })
    }
}

impl Default for WorkingCalendar {
    fn default() -> Self {
        // The defaults are valid; fall back to an all-week 07:30–17:00 if
        // that ever changed, rather than panic.
        WorkingHours::default()
            .calendar(None)
            .unwrap_or(WorkingCalendar {
                start: Time::MIDNIGHT,
                end: Time::from_hms(23, 59, 59).unwrap_or(Time::MIDNIGHT),
                days: [true; 7],
                holidays: BTreeSet::new(),
            })
    }
}

impl WorkingCalendar {
    /// The working days after `from` up to and including `to` (0 when `to`
    /// is not after `from`): "sent the same or the next working day" is at
    /// most 1.
    pub fn working_days_between(&self, from: Date, to: Date) -> i64 {
        let mut n = 0;
        let mut d = from;
        let mut guard = 0;
        while d < to && guard <= MAX_RANGE_DAYS {
            match d.next_day() {
                Some(next) => d = next,
                None => break,
            }
            if self.is_working_day(d) {
                n += 1;
            }
            guard += 1;
        }
        n
    }

    pub fn is_working_day(&self, d: Date) -> bool {
        let i = match d.weekday() {
            Weekday::Monday => 0,
            Weekday::Tuesday => 1,
            Weekday::Wednesday => 2,
            Weekday::Thursday => 3,
            Weekday::Friday => 4,
            Weekday::Saturday => 5,
            Weekday::Sunday => 6,
        };
        self.days[i] && !self.holidays.contains(&d)
    }

    /// Working seconds of day `d` up to the instant `until` (local
    /// microseconds are compared through Unix time).
    fn window(&self, d: Date) -> (i64, i64) {
        let at =
            |t: Time| (d.with_time(t).assume_offset(VIETNAM).unix_timestamp_nanos() / 1000) as i64;
        (at(self.start), at(self.end))
    }

    /// Working seconds between two instants.
    pub fn working_seconds(&self, from: i64, to: i64) -> i64 {
        if to <= from {
            return 0;
        }
        let (mut d, last) = (local_date(from), local_date(to));
        let mut total = 0i64;
        let mut guard = 0;
        while d <= last && guard <= MAX_RANGE_DAYS {
            if self.is_working_day(d) {
                let (s, e) = self.window(d);
                let (a, b) = (s.max(from), e.min(to));
                if b > a {
                    total += (b - a) / 1_000_000;
                }
            }
            match d.next_day() {
                Some(n) => d = n,
                None => break,
            }
            guard += 1;
        }
        total
    }

    /// The latest instant `t` such that at least `hours` working hours lie
    /// between `t` and `now`: a delivery created at or before it has waited
    /// that long. `i64::MIN` when no such instant is within ten years.
    pub fn cutoff(&self, now: i64, hours: f64) -> i64 {
        let mut remaining = (hours.max(0.0) * 3_600_000_000.0) as i64;
        if remaining == 0 {
            return now;
        }
        let mut d = local_date(now);
        for _ in 0..MAX_RANGE_DAYS {
            if self.is_working_day(d) {
                let (s, e) = self.window(d);
                let top = e.min(now);
                if top > s {
                    let available = top - s;
                    if available >= remaining {
                        return top - remaining;
                    }
                    remaining -= available;
                }
            }
            match d.previous_day() {
                Some(p) => d = p,
                None => break,
            }
        }
        i64::MIN
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn working_days_and_a_holiday_file() {
        let hours = WorkingHours {
            holidays_file: Some("holidays.txt".into()),
            ..WorkingHours::default()
        };
        let cal = hours
            .calendar(Some("# Quốc khánh\n2026-09-02 Quốc khánh\n\n2026-09-01\n"))
            .expect("calendar");
        let d = |s: &str| parse_date(s).expect("date");
        // Mon 31 Aug → Thu 3 Sep 2026: 1 and 2 September are holidays.
        assert_eq!(
            cal.working_days_between(d("2026-08-31"), d("2026-09-03")),
            1
        );
        // Fri → Mon: the weekend does not count.
        assert_eq!(
            cal.working_days_between(d("2026-11-20"), d("2026-11-23")),
            1
        );
        assert_eq!(
            cal.working_days_between(d("2026-11-23"), d("2026-11-23")),
            0
        );
        let err = hours
            .calendar(Some("2026-13-01\n"))
            .expect_err("a bad date");
        assert!(
            err.message().contains("holidays.txt line 1"),
            "{}",
            err.message()
        );
    }

    use super::*;
    use time::macros::date;

    fn at(d: Date, h: u8, m: u8) -> i64 {
        (d.with_time(Time::from_hms(h, m, 0).unwrap_or(Time::MIDNIGHT))
            .assume_offset(VIETNAM)
            .unix_timestamp_nanos()
            / 1000) as i64
    }

    #[test]
    fn periods_parse_and_cover_vietnam_days() {
        let p = Period::parse("2026-11").unwrap_or(Period::Year(1970));
        assert_eq!(p, Period::Month(2026, Month::November));
        let (a, b) = p.bounds();
        // 2026-11-01 00:00 +07:00 is 2026-10-31 17:00 UTC.
        assert_eq!(a, 1_793_466_000_000_000);
        assert_eq!(format_local(a), "2026-11-01 00:00:00");
        assert_eq!(format_local(b), "2026-12-01 00:00:00");
        assert_eq!(p.to_string(), "2026-11");

        for (s, first, last) in [
            ("2026-11-24", date!(2026 - 11 - 24), date!(2026 - 11 - 24)),
            ("2026-Q4", date!(2026 - 10 - 01), date!(2026 - 12 - 31)),
            ("2024-q1", date!(2024 - 01 - 01), date!(2024 - 03 - 31)),
            ("2026", date!(2026 - 01 - 01), date!(2026 - 12 - 31)),
            ("2028-02", date!(2028 - 02 - 01), date!(2028 - 02 - 29)),
            (
                "2026-11-01..2026-11-15",
                date!(2026 - 11 - 01),
                date!(2026 - 11 - 15),
            ),
            (" 2026/11/03 ", date!(2026 - 11 - 03), date!(2026 - 11 - 03)),
        ] {
            let p = Period::parse(s);
            assert_eq!(
                p.as_ref().map(|p| p.days()).ok(),
                Some((first, last)),
                "{s}"
            );
        }
        assert_eq!(
            Period::parse("2026-11-01..2026-11-15")
                .map(|p| p.to_string())
                .ok(),
            Some("2026-11-01..2026-11-15".to_owned())
        );
    }

    #[test]
    fn bad_periods_say_what_is_wrong() {
        for s in [
            "",
            "2026-13",
            "2026-Q5",
            "26-11",
            "2026-02-30",
            "2026-11-15..2026-11-01",
            "tháng 11",
            "2026-1",
            "2026-11-24-01",
            "1900",
        ] {
            match Period::parse(s) {
                Ok(p) => panic!("{s:?} was read as {p:?}"),
                Err(e) => {
                    assert_eq!(e.reason(), Reason::Malformed);
                    assert!(e.message().contains("2026-Q4"), "{}", e.message());
                }
            }
        }
    }

    #[test]
    fn previous_month_wraps_the_year() {
        let jan = at(date!(2027 - 01 - 01), 0, 5);
        assert_eq!(
            Period::previous_month(jan),
            Period::Month(2026, Month::December)
        );
        // 2026-11-30 23:30 UTC is already 1 December in Vietnam.
        let utc = OffsetDateTime::new_utc(
            date!(2026 - 11 - 30),
            Time::from_hms(23, 30, 0).unwrap_or(Time::MIDNIGHT),
        );
        let micros = (utc.unix_timestamp_nanos() / 1000) as i64;
        assert_eq!(
            Period::previous_month(micros),
            Period::Month(2026, Month::November)
        );
        assert_eq!(Period::day_of(micros), Period::Day(date!(2026 - 12 - 01)));
    }

    #[test]
    fn working_hours_skip_nights_weekends_and_holidays() {
        let cal = WorkingHours {
            holidays: vec!["2026-11-20".to_owned()],
            ..Default::default()
        }
        .calendar(None)
        .unwrap_or_default();
        // Friday 2026-11-27 16:00 → Monday 2026-11-30 08:30: 1 h + 1 h.
        let fri = at(date!(2026 - 11 - 27), 16, 0);
        let mon = at(date!(2026 - 11 - 30), 8, 30);
        assert_eq!(cal.working_seconds(fri, mon), 2 * 3600);
        // Eight working hours before Monday 08:30: one on Monday, seven on
        // Friday, from 10:00.
        assert_eq!(cal.cutoff(mon, 8.0), at(date!(2026 - 11 - 27), 10, 0));
        assert_eq!(cal.working_seconds(cal.cutoff(mon, 8.0), mon), 8 * 3600);
        // Saturday evening counts as Friday 17:00.
        let sat = at(date!(2026 - 11 - 28), 20, 0);
        assert_eq!(cal.cutoff(sat, 1.0), at(date!(2026 - 11 - 27), 16, 0));
        // The holiday (Friday 20 Nov) is skipped: 9.5 h back from Monday
        // 23 Nov 07:30 lands on Thursday 19 Nov 07:30.
        let mon23 = at(date!(2026 - 11 - 23), 7, 30);
        assert_eq!(cal.cutoff(mon23, 9.5), at(date!(2026 - 11 - 19), 7, 30));
    }

    #[test]
    fn bad_working_hours_are_refused() {
        for wh in [
            WorkingHours {
                start: "7h30".into(),
                ..Default::default()
            },
            WorkingHours {
                end: "07:00".into(),
                ..Default::default()
            },
            WorkingHours {
                days: vec!["monday".into(), "funday".into()],
                ..Default::default()
            },
            WorkingHours {
                days: vec![],
                ..Default::default()
            },
            WorkingHours {
                holidays: vec!["2/9".into()],
                ..Default::default()
            },
        ] {
            assert!(wh.calendar(None).is_err(), "{wh:?}");
        }
    }
}
