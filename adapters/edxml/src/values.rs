//! Dates and timestamps as edXML writes them (`yyyy/MM/dd`,
//! `yyyy/MM/dd HH:mm:ss` in Vietnam time) and as the envelope holds them.

use prost_types::Timestamp;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Vietnam time, which edXML timestamps are written in.
pub(crate) fn vietnam() -> UtcOffset {
    UtcOffset::from_hms(7, 0, 0).unwrap_or(UtcOffset::UTC)
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn ymd(y: &str, m: &str, d: &str) -> Option<Date> {
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = Month::try_from(u8::try_from(digits(m)?).ok()?).ok()?;
    Date::from_calendar_date(
        i32::try_from(digits(y)?).ok()?,
        month,
        u8::try_from(digits(d)?).ok()?,
    )
    .ok()
}

/// `yyyy/MM/dd`, the standard form.
pub(crate) fn standard_date(s: &str) -> Option<Date> {
    let mut p = s.split('/');
    let (Some(y), Some(m), Some(d), None) = (p.next(), p.next(), p.next(), p.next()) else {
        return None;
    };
    ymd(y, m, d)
}

/// The standard form, or what real producers write instead: `dd/MM/yyyy`
/// and ISO `yyyy-MM-dd`.
pub(crate) fn any_date(s: &str) -> Option<Date> {
    let t = s.trim();
    if let Some(d) = standard_date(t) {
        return Some(d);
    }
    let parts: Vec<&str> = t.split(['/', '-']).collect();
    match parts.as_slice() {
        [d, m, y] if y.len() == 4 => ymd(y, m, d),
        [y, m, d] if y.len() == 4 => ymd(y, m, d),
        _ => None,
    }
}

pub(crate) fn iso_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

pub(crate) fn slash_date(d: Date) -> String {
    format!("{:04}/{:02}/{:02}", d.year(), u8::from(d.month()), d.day())
}

/// An envelope date (ISO) written the edXML way; other text as it is.
pub(crate) fn edxml_date(iso: &str) -> String {
    let mut p = iso.split('-');
    match (p.next(), p.next(), p.next(), p.next()) {
        (Some(y), Some(m), Some(d), None) => match ymd(y, m, d) {
            Some(date) => slash_date(date),
            None => iso.to_owned(),
        },
        _ => iso.to_owned(),
    }
}

fn hms(s: &str) -> Option<Time> {
    let mut p = s.split(':');
    let (Some(h), Some(m), Some(sec), None) = (p.next(), p.next(), p.next(), p.next()) else {
        return None;
    };
    if h.len() != 2 || m.len() != 2 || sec.len() != 2 {
        return None;
    }
    Time::from_hms(
        u8::try_from(digits(h)?).ok()?,
        u8::try_from(digits(m)?).ok()?,
        u8::try_from(digits(sec)?).ok()?,
    )
    .ok()
}

/// `yyyy/MM/dd HH:mm:ss`, Vietnam time.
pub(crate) fn standard_timestamp(s: &str) -> Option<OffsetDateTime> {
    let (d, t) = s.split_once(' ')?;
    Some(PrimitiveDateTime::new(standard_date(d)?, hms(t)?).assume_offset(vietnam()))
}

/// The standard form or a date in another form producers use, a space or
/// `T`, and `HH:mm:ss`.
pub(crate) fn any_timestamp(s: &str) -> Option<OffsetDateTime> {
    let t = s.trim();
    if let Some(ts) = standard_timestamp(t) {
        return Some(ts);
    }
    let (d, time) = t.split_once([' ', 'T'])?;
    Some(PrimitiveDateTime::new(any_date(d)?, hms(time)?).assume_offset(vietnam()))
}

/// Formats a moment the edXML way: `yyyy/MM/dd HH:mm:ss`, Vietnam time.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    let v = at.to_offset(vietnam());
    format!(
        "{} {:02}:{:02}:{:02}",
        slash_date(v.date()),
        v.hour(),
        v.minute(),
        v.second()
    )
}

pub(crate) fn to_proto(at: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: at.unix_timestamp(),
        nanos: 0,
    }
}

pub(crate) fn from_proto(t: &Timestamp) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_the_forms_producers_write() {
        assert_eq!(
            standard_date("2018/09/28").map(iso_date).as_deref(),
            Some("2018-09-28")
        );
        assert_eq!(standard_date("30/10/2020"), None);
        assert_eq!(
            any_date("30/10/2020").map(iso_date).as_deref(),
            Some("2020-10-30")
        );
        assert_eq!(
            any_date("2020-10-30").map(iso_date).as_deref(),
            Some("2020-10-30")
        );
        for bad in [
            "2014/02/30",
            "2020/13/01",
            "",
            "2020/1/1",
            "abc",
            "+202/01/01",
        ] {
            assert_eq!(standard_date(bad), None, "{bad}");
        }
        assert_eq!(any_date("2014/02/30"), None);
        assert_eq!(edxml_date("2018-09-28"), "2018/09/28");
        assert_eq!(edxml_date("tháng 9"), "tháng 9");
    }

    #[test]
    fn timestamps_are_vietnam_time() {
        let t = standard_timestamp("2018/09/28 17:25:11");
        assert_eq!(t.map(|t| t.unix_timestamp()), Some(1_538_130_311));
        assert_eq!(
            t.map(format_timestamp).as_deref(),
            Some("2018/09/28 17:25:11")
        );
        assert_eq!(standard_timestamp("2018/09/28 24:00:00"), None);
        assert_eq!(standard_timestamp("2018/09/28T17:25:11"), None);
        assert!(any_timestamp("2018-09-28T17:25:11").is_some());
        let utc = OffsetDateTime::from_unix_timestamp(0).ok();
        assert_eq!(
            utc.map(format_timestamp).as_deref(),
            Some("1970/01/01 07:00:00")
        );
    }
}
