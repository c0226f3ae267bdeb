//! PostgreSQL binary date/time values as ISO 8601 text. PostgreSQL counts days and microseconds
//! from 2000-01-01; `i32::MAX`/`i64::MAX` (and MIN) are `infinity` / `-infinity`.

use std::fmt::Write;

/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const USECS_PER_DAY: i64 = 86_400_000_000;

/// Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn write_date(out: &mut String, pg_days: i64) {
    let (y, m, d) = civil_from_days(pg_days + PG_EPOCH_DAYS);
    if y <= 0 {
        // ISO 8601 has no year 0 in PostgreSQL's output; show as BC like PostgreSQL does.
        let _ = write!(out, "{:04}-{m:02}-{d:02} BC", 1 - y);
    } else {
        let _ = write!(out, "{y:04}-{m:02}-{d:02}");
    }
}

fn write_time(out: &mut String, usecs: i64) {
    let secs = usecs / 1_000_000;
    let frac = usecs % 1_000_000;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
}

pub fn date_text(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => {
            let mut s = String::with_capacity(10);
            write_date(&mut s, i64::from(d));
            s
        }
    }
}

pub fn time_text(usecs: i64) -> String {
    let mut s = String::with_capacity(15);
    write_time(&mut s, usecs);
    s
}

/// timetz: microseconds, then the zone offset in seconds *west* of UTC.
pub fn timetz_text(raw: &[u8]) -> Option<String> {
    let usecs = i64::from_be_bytes(raw.get(0..8)?.try_into().ok()?);
    let west = i32::from_be_bytes(raw.get(8..12)?.try_into().ok()?);
    let mut s = time_text(usecs);
    // i64: a hostile server's i32::MIN offset must not overflow the negation.
    let east = -i64::from(west);
    let sign = if east < 0 { '-' } else { '+' };
    let a = east.unsigned_abs();
    let _ = write!(s, "{sign}{:02}:{:02}", a / 3600, a / 60 % 60);
    Some(s)
}

/// timestamp (local, no zone) or timestamptz (always UTC, `Z`).
pub fn timestamp_text(usecs: i64, utc: bool) -> String {
    match usecs {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let days = usecs.div_euclid(USECS_PER_DAY);
    let in_day = usecs.rem_euclid(USECS_PER_DAY);
    let mut s = String::with_capacity(27);
    write_date(&mut s, days);
    s.push('T');
    write_time(&mut s, in_day);
    if utc {
        s.push('Z');
    }
    s
}

/// interval: microseconds, days, months, as an ISO 8601 duration (`P1Y2M3DT4H5M6.5S`).
pub fn interval_text(raw: &[u8]) -> Option<String> {
    let usecs = i64::from_be_bytes(raw.get(0..8)?.try_into().ok()?);
    let days = i32::from_be_bytes(raw.get(8..12)?.try_into().ok()?);
    let months = i32::from_be_bytes(raw.get(12..16)?.try_into().ok()?);
    let mut s = String::from("P");
    let (y, mo) = (months / 12, months % 12);
    if y != 0 {
        let _ = write!(s, "{y}Y");
    }
    if mo != 0 {
        let _ = write!(s, "{mo}M");
    }
    if days != 0 {
        let _ = write!(s, "{days}D");
    }
    if usecs != 0 {
        s.push('T');
        let (h, rest) = (usecs / 3_600_000_000, usecs % 3_600_000_000);
        let (m, rest) = (rest / 60_000_000, rest % 60_000_000);
        if h != 0 {
            let _ = write!(s, "{h}H");
        }
        if m != 0 {
            let _ = write!(s, "{m}M");
        }
        if rest != 0 {
            let (sec, frac) = (rest / 1_000_000, (rest % 1_000_000).abs());
            let sign = if rest < 0 && sec == 0 { "-" } else { "" };
            if frac == 0 {
                let _ = write!(s, "{sign}{sec}S");
            } else {
                let f = format!("{frac:06}");
                let _ = write!(s, "{sign}{sec}.{}S", f.trim_end_matches('0'));
            }
        }
    }
    if s == "P" {
        s.push_str("T0S");
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date_text(0), "2000-01-01");
        assert_eq!(date_text(-10_957), "1970-01-01");
        assert_eq!(date_text(9_556), "2026-03-01");
        assert_eq!(date_text(59), "2000-02-29");
        assert_eq!(date_text(i32::MAX), "infinity");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp_text(0, true), "2000-01-01T00:00:00Z");
        assert_eq!(timestamp_text(1_500_000, false), "2000-01-01T00:00:01.5");
        assert_eq!(timestamp_text(-1, true), "1999-12-31T23:59:59.999999Z");
        assert_eq!(timestamp_text(i64::MIN, true), "-infinity");
    }

    #[test]
    fn times_and_intervals() {
        assert_eq!(time_text(3_723_000_123), "01:02:03.000123");
        let mut tz = 0i64.to_be_bytes().to_vec();
        tz.extend_from_slice(&(-3600i32).to_be_bytes());
        assert_eq!(timetz_text(&tz).unwrap(), "00:00:00+01:00");
        let iv = |us: i64, d: i32, m: i32| {
            let mut v = us.to_be_bytes().to_vec();
            v.extend_from_slice(&d.to_be_bytes());
            v.extend_from_slice(&m.to_be_bytes());
            interval_text(&v).unwrap()
        };
        assert_eq!(iv(0, 0, 0), "PT0S");
        assert_eq!(iv(14_706_500_000, 3, 14), "P1Y2M3DT4H5M6.5S");
        assert_eq!(iv(-500_000, 0, 0), "PT-0.5S");
    }
}
