//! Maintenance windows: when calls may be made. A [`Schedule`] is a list of weekly windows
//! (`"Mon-Fri 01:00-06:00"`, `"Sat,Sun 00:00-24:00"`) read in one IANA time zone; outside
//! every window no call goes out. No window at all means always open.
//!
//! A spec is `[DAYS] START-END`:
//! - DAYS: day names (`Mon`, `Tuesday`, ...) and ranges (`Mon-Fri`, `Fri-Mon` wraps), joined by
//!   commas, or `daily`; none means every day.
//! - START and END: `HH:MM` or `HH:MM:SS`; END may be `24:00`. An END at or before START runs
//!   past midnight into the next day (`Fri 22:00-02:00` ends Saturday 02:00).
//!
//! Local times are resolved by the zone's rules (jiff's bundled database): a window opening in
//! a DST gap opens when the clock jumps past it. Everything here is a pure function of the time
//! asked about, unix milliseconds, so tests move the clock freely.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

const DAY_SECS: u32 = 86_400;
/// How far ahead the next change is looked for: a window opens at least once a week.
const LOOKAHEAD_DAYS: i64 = 8;

/// One weekly window.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    /// Monday first.
    days: [bool; 7],
    /// Seconds after local midnight.
    start: u32,
    /// Seconds after local midnight; at or before `start`: on the next day.
    end: u32,
}

/// Maintenance windows in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    windows: Vec<Window>,
    specs: Vec<String>,
    tz: TimeZone,
    zone: String,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.windows == other.windows && self.zone == other.zone
    }
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule::always()
    }
}

/// Whether calls may go now, and until when that holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub open: bool,
    /// Unix ms of the next opening (when closed) or closing (when open); `None`: never.
    pub until: Option<i64>,
}

/// Why a schedule could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{spec:?} is not a window like \"Mon-Fri 01:00-06:00\": {why}")]
    Spec { spec: String, why: String },
    #[error("{0:?} is not an IANA time zone name like \"Asia/Shanghai\" or \"UTC\"")]
    Zone(String),
}

impl Schedule {
    /// No windows: always open.
    pub fn always() -> Schedule {
        Schedule {
            windows: Vec::new(),
            specs: Vec::new(),
            tz: TimeZone::UTC,
            zone: "UTC".into(),
        }
    }

    /// Reads `specs` in the zone named `zone`.
    pub fn parse(specs: &[String], zone: &str) -> Result<Schedule, ScheduleError> {
        let tz = zone_named(zone)?;
        let windows = specs
            .iter()
            .map(|s| {
                parse_window(s).map_err(|why| ScheduleError::Spec {
                    spec: s.clone(),
                    why,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Schedule {
            windows,
            specs: specs.to_vec(),
            tz,
            zone: zone.to_string(),
        })
    }

    /// Checks one spec alone.
    pub fn check_spec(spec: &str) -> Result<(), ScheduleError> {
        parse_window(spec)
            .map(drop)
            .map_err(|why| ScheduleError::Spec {
                spec: spec.to_string(),
                why,
            })
    }

    /// The same windows' zone, with other specs (a run's own windows).
    pub fn with_specs(&self, specs: &[String]) -> Result<Schedule, ScheduleError> {
        Schedule::parse(specs, &self.zone)
    }

    pub fn is_always(&self) -> bool {
        self.windows.is_empty()
    }

    pub fn specs(&self) -> &[String] {
        &self.specs
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// `Mon-Fri 01:00-06:00, Sat 00:00-24:00 (Asia/Shanghai)`, or `always`.
    pub fn describe(&self) -> String {
        if self.is_always() {
            return "always".into();
        }
        format!("{} ({})", self.specs.join(", "), self.zone)
    }

    /// Whether `now` (unix ms) is inside a window, and until when that holds.
    pub fn state(&self, now: i64) -> WindowState {
        if self.is_always() {
            return WindowState {
                open: true,
                until: None,
            };
        }
        let intervals = self.intervals(now, LOOKAHEAD_DAYS);
        match intervals.iter().find(|(_, end)| *end > now) {
            Some(&(start, end)) if start <= now => WindowState {
                open: true,
                until: Some(end),
            },
            Some(&(start, _)) => WindowState {
                open: false,
                until: Some(start),
            },
            // Windows exist on no day of the look-ahead: cannot happen (each has a day).
            None => WindowState {
                open: false,
                until: None,
            },
        }
    }

    /// `next opens Tue 01:00 CST`, for a closed schedule at `now`.
    pub fn next_opening_text(&self, now: i64) -> String {
        match self.state(now) {
            WindowState { open: true, .. } => "open now".into(),
            WindowState {
                until: Some(at), ..
            } => format!("next opens {}", self.local_text(at)),
            WindowState { until: None, .. } => "never opens".into(),
        }
    }

    /// `Tue 01:00 CST`: a time as the zone shows it.
    pub fn local_text(&self, at: i64) -> String {
        match Timestamp::from_millisecond(at) {
            Ok(t) => {
                let z = t.to_zoned(self.tz.clone());
                let format = if z.second() != 0 {
                    "%a %H:%M:%S %Z"
                } else {
                    "%a %H:%M %Z"
                };
                z.strftime(format).to_string()
            }
            Err(_) => at.to_string(),
        }
    }

    /// When `work_ms` of open time, counted from `from`, has passed (unix ms).
    pub fn finish_after(&self, from: i64, work_ms: i64) -> i64 {
        if self.is_always() || work_ms <= 0 {
            return from + work_ms.max(0);
        }
        let mut left = work_ms;
        let mut at = from;
        // At most a century of weeks: a schedule always has open time each week.
        for _ in 0..5200 {
            for (start, end) in self.intervals(at, LOOKAHEAD_DAYS) {
                if end <= at {
                    continue;
                }
                let start = start.max(at);
                if end - start >= left {
                    return start + left;
                }
                left -= end - start;
                at = end;
            }
        }
        at
    }

    /// The open intervals (unix ms, merged, sorted) of the days from the one before `around`
    /// to `days` after it.
    fn intervals(&self, around: i64, days: i64) -> Vec<(i64, i64)> {
        let Ok(t) = Timestamp::from_millisecond(around) else {
            return Vec::new();
        };
        let today = t.to_zoned(self.tz.clone()).date();
        let mut all = Vec::new();
        for offset in -1..=days {
            let Ok(day) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            let weekday = day.weekday().to_monday_zero_offset() as usize;
            for w in &self.windows {
                if !w.days[weekday] {
                    continue;
                }
                let end_day = if w.end <= w.start { 1 } else { 0 };
                if let (Some(s), Some(e)) =
                    (self.local(day, 0, w.start), self.local(day, end_day, w.end))
                {
                    if e > s {
                        all.push((s, e));
                    }
                }
            }
        }
        all.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(all.len());
        for (s, e) in all {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    /// Unix ms of `secs` after local midnight, `plus_days` after `day`.
    fn local(&self, day: Date, plus_days: i64, secs: u32) -> Option<i64> {
        let plus = plus_days + i64::from(secs / DAY_SECS);
        let secs = secs % DAY_SECS;
        let day = day.checked_add(jiff::Span::new().days(plus)).ok()?;
        let at = day.at(
            (secs / 3600) as i8,
            (secs / 60 % 60) as i8,
            (secs % 60) as i8,
            0,
        );
        let zoned = self.tz.to_ambiguous_zoned(at).compatible().ok()?;
        Some(zoned.timestamp().as_millisecond())
    }
}

fn zone_named(zone: &str) -> Result<TimeZone, ScheduleError> {
    if zone.eq_ignore_ascii_case("UTC") {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(zone).map_err(|_| ScheduleError::Zone(zone.to_string()))
}

fn parse_window(spec: &str) -> Result<Window, String> {
    let spec = spec.trim();
    let (days, times) = match spec.rsplit_once(char::is_whitespace) {
        Some((days, times)) => (parse_days(days.trim())?, times),
        None => ([true; 7], spec),
    };
    let (start, end) = times
        .split_once('-')
        .ok_or_else(|| format!("{times:?} is not START-END"))?;
    let (start, end) = (parse_time(start)?, parse_time(end)?);
    if start >= DAY_SECS {
        return Err("a window cannot start at 24:00".into());
    }
    if start == end {
        return Err("it starts and ends at the same time (00:00-24:00 is the whole day)".into());
    }
    Ok(Window { days, start, end })
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    if text.eq_ignore_ascii_case("daily") || text.eq_ignore_ascii_case("every day") {
        return Ok([true; 7]);
    }
    let mut days = [false; 7];
    for item in text.split(',') {
        let item = item.trim();
        match item.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day_index(from.trim())?, day_index(to.trim())?);
                let mut d = from;
                loop {
                    days[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day_index(item)?] = true,
        }
    }
    Ok(days)
}

fn day_index(name: &str) -> Result<usize, String> {
    const NAMES: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let lower = name.to_ascii_lowercase();
    NAMES
        .iter()
        .position(|full| lower.len() >= 3 && full.starts_with(&lower))
        .ok_or_else(|| format!("{name:?} is not a day (Mon, Tue, ... or Monday, ...)"))
}

fn parse_time(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a time like 01:00 or 01:00:30");
    let parts: Vec<&str> = text.trim().split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    let n = |i: usize| parts.get(i).map_or(Ok(0), |p| p.parse::<u32>());
    let (h, m, s) = (n(0), n(1), n(2));
    let (h, m, s) = (
        h.map_err(|_| bad())?,
        m.map_err(|_| bad())?,
        s.map_err(|_| bad())?,
    );
    if m > 59 || s > 59 || h > 24 || (h == 24 && (m, s) != (0, 0)) {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a local time in a zone.
    fn at(zone: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
        let tz = zone_named(zone).unwrap();
        jiff::civil::date(y, mo, d)
            .at(h, mi, 0, 0)
            .to_zoned(tz)
            .unwrap()
            .timestamp()
            .as_millisecond()
    }

    fn schedule(specs: &[&str], zone: &str) -> Schedule {
        Schedule::parse(
            &specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            zone,
        )
        .unwrap()
    }

    const H: i64 = 3_600_000;

    #[test]
    fn weekday_windows_open_and_close_in_their_zone() {
        // 2026-12-01 is a Tuesday.
        let s = schedule(
            &["Mon-Fri 01:00-06:00", "Sat,Sun 00:00-24:00"],
            "Asia/Shanghai",
        );
        let tue_noon = at("Asia/Shanghai", 2026, 12, 1, 12, 0);
        let st = s.state(tue_noon);
        assert!(!st.open);
        assert_eq!(st.until, Some(at("Asia/Shanghai", 2026, 12, 2, 1, 0)));
        assert_eq!(s.next_opening_text(tue_noon), "next opens Wed 01:00 CST");
        let wed_2 = at("Asia/Shanghai", 2026, 12, 2, 2, 0);
        assert_eq!(
            s.state(wed_2),
            WindowState {
                open: true,
                until: Some(at("Asia/Shanghai", 2026, 12, 2, 6, 0))
            }
        );
        // Friday 06:00 closes until Saturday 00:00; the weekend ends on Monday 00:00.
        let fri_7 = at("Asia/Shanghai", 2026, 12, 4, 7, 0);
        assert_eq!(
            s.state(fri_7).until,
            Some(at("Asia/Shanghai", 2026, 12, 5, 0, 0))
        );
        let sat = at("Asia/Shanghai", 2026, 12, 5, 9, 0);
        assert_eq!(
            s.state(sat).until,
            Some(at("Asia/Shanghai", 2026, 12, 7, 0, 0)),
            "Saturday and Sunday touch, and merge"
        );
        // Shanghai is UTC+8: 01:00 there is 17:00 UTC the day before.
        assert_eq!(
            at("Asia/Shanghai", 2026, 12, 2, 1, 0),
            at("UTC", 2026, 12, 1, 17, 0)
        );
    }

    #[test]
    fn a_window_past_midnight_belongs_to_its_start_day() {
        let s = schedule(&["Fri 22:00-02:00"], "UTC");
        assert!(s.state(at("UTC", 2026, 12, 5, 1, 0)).open, "Saturday 01:00");
        assert!(!s.state(at("UTC", 2026, 12, 4, 1, 0)).open, "Friday 01:00");
        assert!(s.state(at("UTC", 2026, 12, 4, 23, 0)).open);
        let s = schedule(&["Fri-Mon 10:00-11:00"], "UTC");
        assert!(s.state(at("UTC", 2026, 12, 6, 10, 30)).open, "Sunday");
        assert!(!s.state(at("UTC", 2026, 12, 8, 10, 30)).open, "Tuesday");
    }

    #[test]
    fn dst_gaps_and_overlaps_follow_the_zone() {
        // Europe/Berlin springs forward on 2026-03-29 at 02:00 to 03:00.
        let s = schedule(&["02:30-04:00"], "Europe/Berlin");
        let st = s.state(at("UTC", 2026, 3, 29, 0, 0));
        // 02:30 does not exist that day: it opens as the clock jumps past it (03:30 CEST).
        assert_eq!(st.until, Some(at("UTC", 2026, 3, 29, 1, 30)));
        let open = s.finish_after(st.until.unwrap(), 10 * 60_000);
        assert_eq!(open, at("UTC", 2026, 3, 29, 1, 40));
    }

    #[test]
    fn finish_after_counts_only_window_time() {
        let s = schedule(&["Mon-Fri 01:00-06:00"], "UTC");
        let tue_noon = at("UTC", 2026, 12, 1, 12, 0);
        // 5 h a weekday: 12 h of work is Wed, Thu and two hours of Fri.
        assert_eq!(
            s.finish_after(tue_noon, 12 * H),
            at("UTC", 2026, 12, 4, 3, 0)
        );
        // Inside a window, the rest of it counts.
        let wed_5 = at("UTC", 2026, 12, 2, 5, 0);
        assert_eq!(s.finish_after(wed_5, 2 * H), at("UTC", 2026, 12, 3, 2, 0));
        // Friday evening: over the weekend, to Monday.
        let fri = at("UTC", 2026, 12, 4, 20, 0);
        assert_eq!(s.finish_after(fri, H), at("UTC", 2026, 12, 7, 2, 0));
        // Many weeks of work.
        assert_eq!(
            s.finish_after(tue_noon, 5 * 5 * H * 3),
            at("UTC", 2026, 12, 22, 6, 0)
        );
        assert_eq!(Schedule::always().finish_after(7, 5), 12);
    }

    #[test]
    fn seconds_and_24_00_and_daily_parse() {
        let s = schedule(&["daily 00:00:30-24:00"], "UTC");
        let midnight = at("UTC", 2026, 12, 2, 0, 0);
        assert_eq!(s.state(midnight).until, Some(midnight + 30_000));
        assert_eq!(s.local_text(midnight + 30_000), "Wed 00:00:30 UTC");
        assert!(
            schedule(&["10:00-11:00"], "utc")
                .state(at("UTC", 2026, 12, 2, 10, 5))
                .open
        );
        assert!(Schedule::always().state(0).open);
    }

    #[test]
    fn bad_specs_and_zones_are_named() {
        for bad in [
            "Mon-Fri",
            "Mon-Fri 01:00",
            "Mon-Fri 1:00-06:00",
            "Mon-Fry 01:00-06:00",
            "Mon-Fri 01:00-25:00",
            "Mon-Fri 01:60-06:00",
            "Mon 24:00-01:00",
            "Mon 01:00-01:00",
            "Mo 01:00-02:00",
            "",
        ] {
            let e = Schedule::parse(&[bad.to_string()], "UTC").unwrap_err();
            assert!(
                matches!(&e, ScheduleError::Spec { spec, .. } if spec == bad),
                "{bad:?}: {e}"
            );
        }
        assert_eq!(
            Schedule::parse(&[], "Mars/Olympus").unwrap_err(),
            ScheduleError::Zone("Mars/Olympus".into())
        );
        assert!(Schedule::parse(&["Monday,wed 01:00-02:00".into()], "America/New_York").is_ok());
    }
}
