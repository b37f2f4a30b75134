//! Calendar arithmetic on epoch milliseconds (UTC), without a clock.

/// Milliseconds in a day.
const MS_PER_DAY: i64 = 86_400_000;

/// The UTC calendar date `yyyymmdd` of an epoch-milliseconds instant.
pub fn yyyymmdd(epoch_ms: i64) -> String {
    let (y, m, d) = civil_from_days(epoch_ms.div_euclid(MS_PER_DAY));
    format!("{y:04}{m:02}{d:02}")
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
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
}
