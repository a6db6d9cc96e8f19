//! Dates, times and timestamps: PostgreSQL's ISO text form (with the session settings of
//! [`super::SESSION_SETTINGS`]) to days and microseconds since 1970, and back.

use std::fmt::Write as _;

use crate::clock::{civil_from_days, days_from_civil};

use super::{MICROS_PER_DAY, MICROS_PER_SECOND};

/// `YYYY-MM-DD` (year may have more digits), returning astronomical year, month, day.
pub(super) fn parse_ymd(text: &str) -> Option<(i64, u32, u32)> {
    let mut parts = text.splitn(3, '-');
    let y = parts.next()?;
    let m = parts.next()?;
    let d = parts.next()?;
    if y.len() < 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let year: i64 = y.parse().ok()?;
    let month: u32 = m.parse().ok()?;
    let day: u32 = d.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1 {
        return None;
    }
    Some((year, month, day))
}

/// Strips a trailing ` BC`, returning the rest and whether it was there.
pub(super) fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

pub(super) fn parse_date(text: &str) -> Option<i32> {
    let (body, bc) = strip_bc(text);
    let (year, month, day) = parse_ymd(body)?;
    let year = if bc { 1 - year } else { year };
    i32::try_from(days_from_civil(year, month, day)).ok()
}

pub(super) fn write_year_month_day(days: i64, out: &mut String) -> bool {
    let (year, month, day) = civil_from_days(days);
    let (shown, bc) = if year <= 0 {
        (1 - year, true)
    } else {
        (year, false)
    };
    push_padded(out, shown, 4);
    out.push('-');
    push_padded(out, i64::from(month), 2);
    out.push('-');
    push_padded(out, i64::from(day), 2);
    bc
}

/// `v` in decimal, zero-padded to `width` characters: what `{v:0width$}` writes, without
/// the formatting machinery (dates and times are written for every row replayed, and it
/// was a tenth of the replay's CPU).
pub(super) fn push_padded(out: &mut String, v: i64, width: usize) {
    if v < 0 {
        let _ = write!(out, "{v:0width$}");
        return;
    }
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut n = v;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    at = at.min(digits.len().saturating_sub(width));
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

pub(super) fn write_date(days: i64, out: &mut String) {
    if write_year_month_day(days, out) {
        out.push_str(" BC");
    }
}

/// `HH:MM:SS[.ffffff]` as microseconds after midnight.
pub(super) fn parse_time(text: &str) -> Option<i64> {
    let (hms, frac) = match text.split_once('.') {
        Some((a, b)) => (a, b),
        None => (text, ""),
    };
    let mut parts = hms.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let s: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut micros: i64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        micros += i64::from(b - b'0') * 10_i64.pow(5 - i as u32);
    }
    let total = ((h * 60 + m) * 60 + s) * MICROS_PER_SECOND + micros;
    (0..=MICROS_PER_DAY).contains(&total).then_some(total)
}

pub(super) fn write_time(micros: i64, out: &mut String) {
    let secs = micros.div_euclid(MICROS_PER_SECOND);
    let frac = micros.rem_euclid(MICROS_PER_SECOND);
    push_padded(out, secs / 3600, 2);
    out.push(':');
    push_padded(out, (secs / 60) % 60, 2);
    out.push(':');
    push_padded(out, secs % 60, 2);
    if frac != 0 {
        out.push('.');
        push_padded(out, frac, 6);
    }
}

/// Marks a timestamp that PostgreSQL holds but 64-bit microseconds since 1970 can't.
pub(super) struct OutOfRange;

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]`; `None` if not of that shape.
pub(super) fn parse_timestamp(text: &str, with_zone: bool) -> Option<Result<i64, OutOfRange>> {
    let (body, bc) = strip_bc(text);
    let (date, rest) = body.split_once(' ')?;
    let (year, month, day) = parse_ymd(date)?;
    let year = if bc { 1 - year } else { year };
    let (time, offset_secs) = if with_zone {
        let at = rest.rfind(['+', '-'])?;
        let (time, zone) = rest.split_at(at);
        (time, parse_zone(zone)?)
    } else {
        (rest, 0)
    };
    let time = parse_time(time)?;
    let days = days_from_civil(year, month, day);
    let micros = i128::from(days) * i128::from(MICROS_PER_DAY) + i128::from(time)
        - i128::from(offset_secs) * i128::from(MICROS_PER_SECOND);
    Some(i64::try_from(micros).map_err(|_| OutOfRange))
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` (or `-`) as seconds east of UTC.
pub(super) fn parse_zone(zone: &str) -> Option<i64> {
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut secs = 0;
    for (i, part) in zone[1..].split(':').enumerate() {
        if i > 2 || part.len() != 2 {
            return None;
        }
        let v: i64 = part.parse().ok()?;
        secs += v * [3600, 60, 1][i];
    }
    Some(sign * secs)
}

/// A timestamp as PostgreSQL writes it with the session settings of
/// [`super::SESSION_SETTINGS`] (ISO, UTC): `days` since 1970-01-01 and `micros_of_day` after
/// midnight, fractional seconds without trailing zeros, `+00` for `timestamptz`, ` BC`
/// before year 1. For the timestamps 64-bit microseconds since 1970 can't hold (after
/// about 294247 AD), which travel as this text, as they do when read from text COPY.
pub fn write_pg_timestamp(days: i64, micros_of_day: i64, with_zone: bool, out: &mut String) {
    write_timestamp_parts(days, micros_of_day, with_zone, true, out);
}

pub(super) fn write_timestamp(micros: i64, with_zone: bool, out: &mut String) {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let time = micros.rem_euclid(MICROS_PER_DAY);
    write_timestamp_parts(days, time, with_zone, false, out);
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+00][ BC]`; with `trim`, the fraction without its
/// trailing zeros (as PostgreSQL's output function writes it).
pub(super) fn write_timestamp_parts(
    days: i64,
    time: i64,
    with_zone: bool,
    trim: bool,
    out: &mut String,
) {
    let bc = write_year_month_day(days, out);
    out.push(' ');
    let start = out.len();
    write_time(time, out);
    if trim && out[start..].contains('.') {
        let trimmed = out.trim_end_matches('0').len();
        out.truncate(trimmed);
    }
    if with_zone {
        out.push_str("+00");
    }
    if bc {
        out.push_str(" BC");
    }
}
