//! Just enough calendar arithmetic for our two timestamp formats: RFC 5322
//! dates in the Received header and RFC 3339 in the stores. UTC only, so no
//! time-zone database is needed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
    /// Days since 1970-01-01, for the weekday.
    days: i64,
}

impl Utc {
    /// Breaks `t` down; times before 1970 are clamped to the epoch.
    pub fn from_system(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = d.as_secs() as i64;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            millis: d.subsec_millis(),
            days,
        }
    }

    /// `Thu, 3 Dec 2026 17:15:33 +0000` (RFC 5322 §3.3).
    pub fn rfc5322(&self) -> String {
        let mut out = Vec::with_capacity(32);
        self.write_rfc5322(&mut out);
        String::from_utf8(out).expect("ASCII")
    }

    /// Appends the RFC 5322 form to `out`.
    pub fn write_rfc5322(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "{}, {} {} {} {:02}:{:02}:{:02} +0000",
            DAYS[self.days.rem_euclid(7) as usize],
            self.day,
            MONTHS[self.month as usize - 1],
            self.year,
            self.hour,
            self.minute,
            self.second
        );
    }

    /// `2026-12-03T17:15:33.123Z` (RFC 3339; sorts as text).
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }

    /// `2026-12-03 17:15:33` (SQL `DATETIME`).
    pub fn sql_datetime(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (the well-known era-based algorithm; 400-year eras of 146097 days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> Utc {
        Utc::from_system(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
    }

    #[test]
    fn known_instants() {
        // Values checked against `date -u -d @N`.
        let cases = [
            (
                0,
                "Thu, 1 Jan 1970 00:00:00 +0000",
                "1970-01-01T00:00:00.000Z",
            ),
            (
                951_782_400,
                "Tue, 29 Feb 2000 00:00:00 +0000",
                "2000-02-29T00:00:00.000Z",
            ),
            (
                1_796_318_133,
                "Thu, 3 Dec 2026 17:15:33 +0000",
                "2026-12-03T17:15:33.000Z",
            ),
            (
                4_107_542_399,
                "Sun, 28 Feb 2100 23:59:59 +0000",
                "2100-02-28T23:59:59.000Z",
            ),
            (
                4_107_542_400,
                "Mon, 1 Mar 2100 00:00:00 +0000",
                "2100-03-01T00:00:00.000Z",
            ),
        ];
        for (secs, rfc5322, rfc3339) in cases {
            let t = at(secs, 0);
            assert_eq!(t.rfc5322(), rfc5322, "{secs}");
            assert_eq!(t.rfc3339(), rfc3339, "{secs}");
        }
        assert_eq!(at(1_796_318_133, 42).rfc3339(), "2026-12-03T17:15:33.042Z");
        assert_eq!(at(1_796_318_133, 42).sql_datetime(), "2026-12-03 17:15:33");
    }
}
