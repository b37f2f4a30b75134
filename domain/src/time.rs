//! Calendar arithmetic on epoch milliseconds (UTC), without a clock.

/// Milliseconds in a day.
pub(crate) const MS_PER_DAY: i64 = 86_400_000;

/// The UTC calendar date `yyyymmdd` of an epoch-milliseconds instant.
pub fn yyyymmdd(epoch_ms: i64) -> String {
    let (y, m, d) = civil_from_days(epoch_ms.div_euclid(MS_PER_DAY));
    format!("{y:04}{m:02}{d:02}")
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (or `+00:00`), or a date `YYYY-MM-DD`
/// (midnight UTC), into epoch milliseconds. Other offsets are refused: operators give
/// UTC.
pub fn parse_rfc3339_utc(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * MS_PER_DAY;
    if let Some(t) = time {
        let t = t.strip_suffix('Z').or_else(|| t.strip_suffix("+00:00"))?;
        let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
        let mut f = hms.split(':');
        let h: i64 = f.next()?.parse().ok()?;
        let mi: i64 = f.next()?.parse().ok()?;
        let se: i64 = f.next().map_or(Some(0), |v| v.parse().ok())?;
        if h > 23 || mi > 59 || se > 60 || f.next().is_some() {
            return None;
        }
        let frac_ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
        ms += ((h * 60 + mi) * 60 + se) * 1000 + frac_ms;
    }
    Some(ms)
}

/// Howard Hinnant's `days_from_civil`: (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(yyyymmdd(0), "19700101");
        assert_eq!(yyyymmdd(1_706_457_600_000), "20240128");
        assert_eq!(yyyymmdd(951_782_400_000), "20000229");
        assert_eq!(yyyymmdd(1_798_761_599_999), "20261231");
        assert_eq!(yyyymmdd(-1), "19691231");
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_utc("2024-01-28"), Some(1_706_400_000_000));
        assert_eq!(
            parse_rfc3339_utc("2024-01-28T16:00:00Z"),
            Some(1_706_457_600_000)
        );
        assert_eq!(
            parse_rfc3339_utc("2024-01-28T16:00:00.5Z"),
            Some(1_706_457_600_500)
        );
        assert_eq!(
            parse_rfc3339_utc("2000-02-29T00:00:00+00:00"),
            Some(951_782_400_000)
        );
        assert_eq!(parse_rfc3339_utc("2024-01-28T16:00:00-03:00"), None);
        assert_eq!(parse_rfc3339_utc("yesterday"), None);
        for ms in [0, 951_782_400_000, 1_798_761_599_000] {
            let date = yyyymmdd(ms);
            let iso = format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..]);
            assert_eq!(
                parse_rfc3339_utc(&iso).map(|v| v / MS_PER_DAY),
                Some(ms / MS_PER_DAY)
            );
        }
    }
}
