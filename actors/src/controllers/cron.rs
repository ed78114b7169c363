//! Cron schedules as Kubernetes reads them (robfig/cron v3's standard parser, which the API's
//! validation mirrors): five fields (minute, hour, day of month, month, day of week) with
//! `*`, `?`, ranges, lists, steps and month/day names; the `@yearly` … `@hourly` macros and
//! `@every <duration>`; an optional `TZ=`/`CRON_TZ=` prefix (legacy objects only). Times are
//! matched in a time zone's civil time, so a daily 02:30 job runs once on DST days too: a time
//! that falls in a spring-forward gap runs at the first instant after it, and one repeated in
//! an autumn fold runs at its first occurrence.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Invalid(String),
    #[error("unknown time zone {0}")]
    UnknownTimeZone(String),
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Fields(Fields),
    /// `@every <duration>`, in whole seconds (at least one).
    Every(i64),
}

/// Bit sets of the values each field allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// The day fields were `*` or `?` (robfig's star bit): with both restricted a day
    /// matches when either does, as in Vixie cron; otherwise both must.
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The value of `names[0]`.
    first: u32,
}

const BOUNDS: [Bounds; 5] = [
    Bounds {
        min: 0,
        max: 59,
        names: &[],
        first: 0,
    },
    Bounds {
        min: 0,
        max: 23,
        names: &[],
        first: 0,
    },
    Bounds {
        min: 1,
        max: 31,
        names: &[],
        first: 0,
    },
    Bounds {
        min: 1,
        max: 12,
        names: &MONTHS,
        first: 1,
    },
    Bounds {
        min: 0,
        max: 6,
        names: &DAYS,
        first: 0,
    },
];

/// Splits a `TZ=`/`CRON_TZ=` prefix off a schedule: (zone, rest).
pub fn split_zone(spec: &str) -> (Option<&str>, &str) {
    let spec = spec.trim();
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let (zone, rest) = spec.split_once(char::is_whitespace).unwrap_or((spec, ""));
        let zone = zone.split_once('=').map_or("", |(_, z)| z);
        return (Some(zone), rest.trim());
    }
    (None, spec)
}

/// The time zone a CronJob's schedule runs in: `timeZone`, else a legacy prefix, else UTC.
pub fn zone(time_zone: Option<&str>, schedule: &str) -> Result<TimeZone, ScheduleError> {
    let name = time_zone.or(split_zone(schedule).0);
    match name {
        None => Ok(TimeZone::UTC),
        Some(n) if n == "UTC" || n == "Etc/UTC" => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|_| ScheduleError::UnknownTimeZone(n.to_owned())),
    }
}

pub fn parse(spec: &str) -> Result<Schedule, ScheduleError> {
    let (_, spec) = split_zone(spec);
    let invalid = |m: String| ScheduleError::Invalid(m);
    if spec.is_empty() {
        return Err(invalid("empty spec string".into()));
    }
    if let Some(macro_) = spec.strip_prefix('@') {
        let fields = match macro_ {
            "yearly" | "annually" => "0 0 1 1 *",
            "monthly" => "0 0 1 * *",
            "weekly" => "0 0 * * 0",
            "daily" | "midnight" => "0 0 * * *",
            "hourly" => "0 * * * *",
            _ => {
                let Some(d) = macro_.strip_prefix("every ") else {
                    return Err(invalid(format!("unrecognized descriptor: {spec}")));
                };
                let secs = go_duration_secs(d.trim())
                    .ok_or_else(|| invalid(format!("failed to parse duration {spec}")))?;
                return Ok(Schedule::Every(secs.max(1)));
            }
        };
        return parse(fields);
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(invalid(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        )));
    }
    let mut sets = [0u64; 5];
    let mut stars = [false; 5];
    for (i, (field, b)) in fields.iter().zip(BOUNDS.iter()).enumerate() {
        for expr in field.split(',') {
            let (bits, star) = range(expr, b).map_err(invalid)?;
            sets[i] |= bits;
            stars[i] |= star;
        }
    }
    Ok(Schedule::Fields(Fields {
        minutes: sets[0],
        hours: sets[1],
        days_of_month: sets[2],
        months: sets[3],
        days_of_week: sets[4],
        dom_star: stars[2],
        dow_star: stars[4],
    }))
}

/// One comma-separated part: `*`, `?`, `a`, `a-b`, each optionally `/step`.
fn range(expr: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let (range, step) = match expr.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (expr, None),
    };
    let star = range == "*" || range == "?";
    let (start, mut end) = if star {
        (b.min, b.max)
    } else {
        match range.split_once('-') {
            Some((lo, hi)) => (value(lo, b)?, value(hi, b)?),
            None => {
                let v = value(range, b)?;
                (v, v)
            }
        }
    };
    let step = match step {
        None => 1,
        Some(s) => {
            let n: u32 = s
                .parse()
                .map_err(|_| format!("failed to parse int from {s}"))?;
            if n == 0 {
                return Err(format!("step of range should be a positive number: {expr}"));
            }
            // `a/n` means a through the maximum, every n.
            if !star && !range.contains('-') {
                end = b.max;
            }
            n
        }
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    let bits = (start..=end)
        .step_by(step as usize)
        .fold(0u64, |acc, v| acc | (1 << v));
    Ok((bits, star))
}

fn value(s: &str, b: &Bounds) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + b.first);
    }
    s.parse::<u32>()
        .map_err(|_| format!("failed to parse int from {s}"))
}

/// A Go duration (`1h30m`, `90s`, `1.5h`) in whole seconds.
fn go_duration_secs(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    (total.is_finite() && total < 1e12).then_some(total as i64)
}

impl Fields {
    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = self.days_of_month & (1 << dt.day()) != 0;
        let dow = self.days_of_week & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }
}

/// How far ahead a schedule is searched: a `30 2 31 2 *` (February 31st) never fires.
const SEARCH_YEARS: i16 = 5;

impl Schedule {
    /// The first activation strictly after `after` (seconds since the epoch), in `tz`.
    pub fn next_after(&self, after: i64, tz: &TimeZone) -> Option<i64> {
        let f = match self {
            Schedule::Every(d) => return after.checked_add(*d),
            Schedule::Fields(f) => f,
        };
        let ts = Timestamp::from_second(after).ok()?;
        let start = tz.to_datetime(ts);
        // The next whole minute in civil time.
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.year().saturating_add(SEARCH_YEARS);
        while t.year() <= limit {
            if f.months & (1 << t.month()) == 0 {
                t = t
                    .first_of_month()
                    .start_of_day()
                    .checked_add(1.month())
                    .ok()?;
                continue;
            }
            if !f.day_matches(t) {
                t = t.start_of_day().checked_add(1.day()).ok()?;
                continue;
            }
            if f.hours & (1 << t.hour()) == 0 {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if f.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A civil time in a gap maps to the instant after it; one in a fold to its first
            // occurrence (which may already be past: then the search goes on).
            let at = tz
                .to_ambiguous_zoned(t)
                .compatible()
                .ok()?
                .timestamp()
                .as_second();
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The latest activation in `(after, now]` and how many there were (counting stops at
    /// `cap`; past it, the search jumps ahead instead of walking every missed time).
    pub fn most_recent(
        &self,
        after: i64,
        now: i64,
        tz: &TimeZone,
        cap: usize,
    ) -> (Option<i64>, usize) {
        let mut latest = None;
        let mut count = 0;
        let mut cursor = after;
        while let Some(t) = self.next_after(cursor, tz) {
            if t > now {
                break;
            }
            count += 1;
            if count >= cap
                && let Some(prev) = latest
            {
                // Too many missed runs: skip to near `now` by the last gap, as Kubernetes does.
                let gap: i64 = t - prev;
                if t + 2 * gap < now {
                    cursor = now - 2 * gap;
                    latest = Some(t);
                    continue;
                }
            }
            latest = Some(t);
            cursor = t;
        }
        (latest, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    fn next(spec: &str, after: &str) -> String {
        let s = parse(spec).unwrap();
        let t = s.next_after(utc(after), &TimeZone::UTC).unwrap();
        Timestamp::from_second(t).unwrap().to_string()
    }

    #[test]
    fn fields_ranges_lists_steps_and_names() {
        assert_eq!(
            next("*/15 * * * *", "2026-03-01T10:07:30Z"),
            "2026-03-01T10:15:00Z"
        );
        assert_eq!(
            next("*/1 * * * *", "2026-03-01T10:07:00Z"),
            "2026-03-01T10:08:00Z"
        );
        assert_eq!(
            next("5,35 9-17/4 * * *", "2026-03-01T09:40:00Z"),
            "2026-03-01T13:05:00Z"
        );
        assert_eq!(
            next("0 0 1 jan,JUL *", "2026-03-01T00:00:00Z"),
            "2026-07-01T00:00:00Z"
        );
        // 2026-03-01 is a Sunday; Monday to Friday at 08:30.
        assert_eq!(
            next("30 8 * * mon-fri", "2026-03-01T00:00:00Z"),
            "2026-03-02T08:30:00Z"
        );
        assert_eq!(
            next("0 12 * * 6", "2026-03-01T00:00:00Z"),
            "2026-03-07T12:00:00Z"
        );
        // `a/n`: from a to the maximum.
        assert_eq!(
            next("50/5 * * * *", "2026-03-01T00:56:00Z"),
            "2026-03-01T01:50:00Z"
        );
        // Leap day.
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("0 0 31 * *", "2026-04-01T00:00:00Z"),
            "2026-05-31T00:00:00Z"
        );
    }

    #[test]
    fn both_day_fields_restricted_match_either() {
        // The 13th or any Friday: 2026-03-06 is a Friday, before the 13th.
        assert_eq!(
            next("0 0 13 * 5", "2026-03-01T00:00:00Z"),
            "2026-03-06T00:00:00Z"
        );
        // With a star day of week, only the 13th.
        assert_eq!(
            next("0 0 13 * *", "2026-03-01T00:00:00Z"),
            "2026-03-13T00:00:00Z"
        );
        // `*/2` counts as a star too (robfig): both must match.
        assert_eq!(
            next("0 0 */2 * 1", "2026-03-01T00:00:00Z"),
            "2026-03-09T00:00:00Z"
        );
    }

    #[test]
    fn macros_and_every() {
        assert_eq!(
            next("@hourly", "2026-03-01T10:00:00Z"),
            "2026-03-01T11:00:00Z"
        );
        assert_eq!(
            next("@daily", "2026-03-01T10:00:00Z"),
            "2026-03-02T00:00:00Z"
        );
        assert_eq!(
            next("@weekly", "2026-03-01T10:00:00Z"),
            "2026-03-08T00:00:00Z"
        );
        assert_eq!(
            next("@monthly", "2026-03-01T10:00:00Z"),
            "2026-04-01T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-03-01T10:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("@every 1h30m", "2026-03-01T10:00:00Z"),
            "2026-03-01T11:30:00Z"
        );
    }

    #[test]
    fn bad_schedules_are_errors() {
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7",
            "5-2 * * * *",
            "*/0 * * * *",
            "x * * * *",
            "@fortnightly",
            "@every forever",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            parse("0 0 30 2 *").unwrap().next_after(0, &TimeZone::UTC),
            None
        );
    }

    #[test]
    fn time_zones_and_dst() {
        let tz = zone(Some("America/New_York"), "").unwrap();
        let s = parse("30 2 * * *").unwrap();
        // 2026-03-08 02:30 does not exist in New York: the run is at 03:30 EDT (07:30Z).
        let t = s.next_after(utc("2026-03-08T05:00:00Z"), &tz).unwrap();
        assert_eq!(
            Timestamp::from_second(t).unwrap().to_string(),
            "2026-03-08T07:30:00Z"
        );
        // 2026-11-01 01:30 happens twice: the first (EDT, 05:30Z) only.
        let s = parse("30 1 * * *").unwrap();
        let t = s.next_after(utc("2026-11-01T04:00:00Z"), &tz).unwrap();
        assert_eq!(
            Timestamp::from_second(t).unwrap().to_string(),
            "2026-11-01T05:30:00Z"
        );
        let t2 = s.next_after(t, &tz).unwrap();
        assert_eq!(
            Timestamp::from_second(t2).unwrap().to_string(),
            "2026-11-02T06:30:00Z"
        );
        assert!(matches!(
            zone(Some("Mars/Olympus"), ""),
            Err(ScheduleError::UnknownTimeZone(_))
        ));
        // A legacy prefix names the zone; the fields still parse.
        let legacy = "CRON_TZ=Asia/Tokyo 0 9 * * *";
        let tz = zone(None, legacy).unwrap();
        let t = parse(legacy)
            .unwrap()
            .next_after(utc("2026-03-01T01:00:00Z"), &tz)
            .unwrap();
        assert_eq!(
            Timestamp::from_second(t).unwrap().to_string(),
            "2026-03-02T00:00:00Z"
        );
    }

    #[test]
    fn most_recent_counts_missed_runs() {
        let s = parse("*/10 * * * *").unwrap();
        let (t, n) = s.most_recent(
            utc("2026-03-01T10:00:00Z"),
            utc("2026-03-01T10:35:00Z"),
            &TimeZone::UTC,
            100,
        );
        assert_eq!(t, Some(utc("2026-03-01T10:30:00Z")));
        assert_eq!(n, 3);
        let (t, n) = s.most_recent(
            utc("2026-03-01T10:30:00Z"),
            utc("2026-03-01T10:35:00Z"),
            &TimeZone::UTC,
            100,
        );
        assert_eq!((t, n), (None, 0));
        // A year of missed minutes does not walk every one of them.
        let s = parse("* * * * *").unwrap();
        let (t, n) = s.most_recent(
            utc("2025-03-01T00:00:00Z"),
            utc("2026-03-01T10:35:30Z"),
            &TimeZone::UTC,
            100,
        );
        assert_eq!(t, Some(utc("2026-03-01T10:35:00Z")));
        assert!((100..200).contains(&n), "{n}");
    }
}
