//! ISO 9660 timestamps: the 7-byte recording date of directory records and the 17-byte digit
//! form of Rock Ridge `TF` long stamps, as seconds since the Unix epoch.

/// Seconds since the epoch of a 7-byte date (years since 1900, month, day, hour, minute,
/// second, offset from GMT in 15-minute units); `None` if unset or invalid.
pub(super) fn short_time(b: &[u8]) -> Option<i64> {
    let &[year, month, day, hour, minute, second, offset] = b.get(..7)? else {
        return None;
    };
    let f = [month, day, hour, minute, second].map(i64::from);
    epoch_seconds(1900 + i64::from(year), f, offset as i8)
}

/// Seconds since the epoch of a 17-byte date (`YYYYMMDDhhmmsscc` digits and GMT offset).
pub(super) fn long_time(b: &[u8]) -> Option<i64> {
    let b = b.get(..17)?;
    let num = |from: usize, to: usize| -> Option<i64> {
        b.get(from..to)?.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let year = num(0, 4)?;
    if year == 0 {
        return None;
    }
    let f = [
        num(4, 6)?,
        num(6, 8)?,
        num(8, 10)?,
        num(10, 12)?,
        num(12, 14)?,
    ];
    epoch_seconds(year, f, *b.get(16)? as i8)
}

/// Seconds since the epoch of a calendar date and time in a zone `offset` quarter hours east.
fn epoch_seconds(
    year: i64,
    [month, day, hour, minute, second]: [i64; 5],
    offset: i8,
) -> Option<i64> {
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (H. Hinnant): March-based years make the leap day the last of the year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let offset = if (-48..=52).contains(&offset) {
        i64::from(offset)
    } else {
        0
    };
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset * 900)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(short_time(&[70, 1, 1, 0, 0, 0, 0]), Some(0));
        assert_eq!(short_time(&[70, 1, 1, 1, 0, 0, 4]), Some(0));
        assert_eq!(short_time(&[100, 3, 1, 0, 0, 0, 0]), Some(951_868_800));
        assert_eq!(short_time(&[0; 7]), None);
        assert_eq!(short_time(&[70, 13, 1, 0, 0, 0, 0]), None);
        assert_eq!(long_time(b"2000030100000000\0"), Some(951_868_800));
        assert_eq!(long_time(b"0000000000000000\0"), None);
        assert_eq!(long_time(b"20000301000000x0\0"), Some(951_868_800));
        assert_eq!(long_time(b"2000x301000000000"), None);
    }
}
