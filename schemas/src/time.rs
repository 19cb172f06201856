//! Calendar arithmetic of the contracts: change events carry times as ISO-8601 text or as
//! milliseconds since the epoch, the master dataset is partitioned by UTC day, the warehouse keys
//! dates as days since the epoch. Proleptic Gregorian calendar, UTC, no time zones database.

/// Parses `YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+00:00)` to µs since the epoch.
pub fn parse_zoned(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        let mut frac = digits.get(..digits.len().min(6))?.to_string();
        while frac.len() < 6 {
            frac.push('0');
        }
        micros = frac.parse().ok()?;
    }
    let offset_s = match &s[i..] {
        "Z" | "+00:00" | "+00" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let h: i64 = tz[1..3].parse().ok()?;
            let m: i64 = tz[4..6].parse().ok()?;
            let v = h * 3600 + m * 60;
            if tz.starts_with('+') {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_s) * 1_000_000) + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD` of a Unix time in ms (UTC).
pub fn day_of_ms(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timestamps_and_dates() {
        assert_eq!(parse_zoned("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_zoned("2024-08-01T10:00:00.5Z"), Some(1_722_506_400_500_000));
        assert_eq!(parse_zoned("2024-08-01T12:00:00+02:00"), Some(1_722_506_400_000_000));
        assert_eq!(parse_zoned("2024-13-01T10:00:00Z"), None);
        for z in [-1000, 0, 19_000, 20_000, 60_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn days_of_unix_times() {
        assert_eq!(day_of_ms(1_722_470_400_000), "2024-08-01");
        assert_eq!(day_of_ms(-1), "1969-12-31");
    }
}
