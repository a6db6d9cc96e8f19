//! Exact decimals: `numeric(p,s)` read from PostgreSQL's text form or from its binary
//! (base-10000) form, and written back as text.

use num_bigint::{BigInt, Sign};

/// An exact decimal: `unscaled × 10^-scale`, the unscaled value in big-endian two's
/// complement as Avro's `decimal` logical type stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decimal {
    /// Big-endian two's complement bytes of the unscaled value.
    pub unscaled: Vec<u8>,
    /// Digits after the decimal point.
    pub scale: u32,
}

impl Decimal {
    /// The decimal as PostgreSQL prints `numeric(p,s)`: exactly `scale` digits after the point.
    fn digits(&self) -> String {
        let unscaled = BigInt::from_signed_bytes_be(&self.unscaled);
        let negative = unscaled.sign() == Sign::Minus;
        let magnitude = unscaled.magnitude().to_str_radix(10);
        let scale = self.scale as usize;
        let mut out = String::with_capacity(magnitude.len() + 3);
        if negative {
            out.push('-');
        }
        if scale == 0 {
            out.push_str(&magnitude);
        } else if magnitude.len() > scale {
            let (int, frac) = magnitude.split_at(magnitude.len() - scale);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', scale - magnitude.len()));
            out.push_str(&magnitude);
        }
        out
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.digits())
    }
}

/// Reads a plain decimal (`-12.340`) at a fixed scale; `None` if it isn't one or has more
/// fractional digits than `scale` (which would lose digits).
pub fn parse_decimal(text: &str, scale: u32) -> Option<Decimal> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > scale as usize
    {
        return None;
    }
    let mut digits = String::with_capacity(int.len() + scale as usize);
    digits.push_str(int);
    digits.push_str(frac);
    digits.extend(std::iter::repeat_n('0', scale as usize - frac.len()));
    let magnitude = BigInt::parse_bytes(digits.as_bytes(), 10).unwrap_or_default();
    let unscaled = if negative { -magnitude } else { magnitude };
    Some(Decimal {
        unscaled: unscaled.to_signed_bytes_be(),
        scale,
    })
}

/// A `numeric` in PostgreSQL's binary form (`numeric_send`: base-10000 digits, the
/// first of weight `weight`, i.e. worth `10000^weight`) as the [`Decimal`] of `scale`
/// that [`parse_decimal`] makes of its text; `None` when it has more fractional digits
/// than `scale` (the text path refuses those too) or a digit is out of range.
pub fn decimal_from_base10000(
    negative: bool,
    weight: i16,
    digits: &[i16],
    scale: u32,
) -> Option<Decimal> {
    if digits.iter().any(|d| !(0..10_000).contains(d)) {
        return None;
    }
    // The digits read as one integer are the value times 10000^(n - 1 - weight); the
    // unscaled value is the value times 10^scale.
    let shift = 4 * (digits.len() as i64 - 1 - i64::from(weight)) - i64::from(scale);
    let unscaled = match small_unscaled(digits, shift) {
        Some(v) => {
            let v = if negative { -v } else { v };
            let b = v.to_be_bytes();
            // The shortest two's complement form, as BigInt::to_signed_bytes_be writes.
            let mut at = 0;
            while at < 15
                && ((b[at] == 0 && b[at + 1] & 0x80 == 0)
                    || (b[at] == 0xff && b[at + 1] & 0x80 != 0))
            {
                at += 1;
            }
            b[at..].to_vec()
        }
        None => {
            let mut acc = BigInt::from(0);
            for &d in digits {
                acc = acc * 10_000 + d;
            }
            let ten = BigInt::from(10);
            if shift > 0 {
                let div = ten.pow(shift as u32);
                if &acc % &div != BigInt::from(0) {
                    return None;
                }
                acc /= div;
            } else if shift < 0 {
                acc *= ten.pow((-shift) as u32);
            }
            if negative {
                acc = -acc;
            }
            acc.to_signed_bytes_be()
        }
    };
    Some(Decimal { unscaled, scale })
}

/// [`decimal_from_base10000`]'s magnitude in an `i128` when it fits (up to 8 digits and
/// a power of ten that does not overflow); `None` also when the fraction does not fit
/// the scale, which the BigInt path then decides.
fn small_unscaled(digits: &[i16], shift: i64) -> Option<i128> {
    if digits.len() > 8 {
        return None;
    }
    let mut acc: i128 = 0;
    for &d in digits {
        acc = acc * 10_000 + i128::from(d);
    }
    if shift > 0 {
        let div = 10_i128.checked_pow(u32::try_from(shift).ok()?)?;
        (acc % div == 0).then(|| acc / div)
    } else {
        acc.checked_mul(10_i128.checked_pow(u32::try_from(-shift).ok()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL's base-10000 form of a decimal text (as `numeric_send` writes it:
    /// leading and trailing zero groups stripped).
    fn base10000(text: &str) -> (bool, i16, Vec<i16>) {
        let (negative, body) = match text.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, text),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let int = int.trim_start_matches('0');
        let pad_int = (4 - int.len() % 4) % 4;
        let pad_frac = (4 - frac.len() % 4) % 4;
        let all = format!("{}{int}{frac}{}", "0".repeat(pad_int), "0".repeat(pad_frac));
        let mut digits: Vec<i16> = all
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let mut weight = ((int.len() + pad_int) / 4) as i16 - 1;
        while digits.first() == Some(&0) {
            digits.remove(0);
            weight -= 1;
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        (negative, weight, digits)
    }

    #[test]
    fn numeric_binary_digits_make_the_decimal_its_text_makes() {
        let cases = [
            ("0.00", 2),
            ("12345678.90", 2),
            ("-0.01", 2),
            ("-12345678.90", 2),
            ("99999999999999999999999999999999999999", 0),
            ("-170141183460469231731687303715884105728", 0),
            ("0.000000000000000000000000000000000000000000001", 45),
            (
                "123456789012345678901234567890.123456789012345678901234567890",
                30,
            ),
            ("10000", 0),
            ("10000.0000", 4),
            ("1.5", 3),
            ("128", 0),
            ("-128", 0),
            ("-129", 0),
            ("127", 0),
        ];
        for (text, scale) in cases {
            let (negative, weight, digits) = base10000(text);
            let want = parse_decimal(text, scale).unwrap();
            let got = decimal_from_base10000(negative, weight, &digits, scale).unwrap();
            assert_eq!(got, want, "{text} scale {scale} ({weight} {digits:?})");
        }
        // More fractional digits than the scale: refused, as the text is.
        let (n, w, d) = base10000("1.25");
        assert_eq!(decimal_from_base10000(n, w, &d, 1), None);
        assert_eq!(decimal_from_base10000(false, 0, &[10_000], 0), None);
    }
}
