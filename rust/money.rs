//! Exact money: signed int64 counts of units at scale 4 (1 unit = 0.0001).
//!
//! Decimal input follows exactly `-?(0|[1-9][0-9]*)(\.[0-9]{1,4})?` and must lie within
//! [`MIN_UNITS`, `MAX_UNITS`]. Output never has trailing zeros. All arithmetic is checked.

use std::fmt;

/// Units per major unit (scale 4).
pub const UNITS_PER_MAJOR: i64 = 10_000;
/// The largest amount in units: `922337203685477.5807`.
pub const MAX_UNITS: i64 = i64::MAX;
/// The smallest amount in units: `-922337203685477.5807`. The spec bounds amounts at
/// ±922337203685477.5807, so `-922337203685477.5808` (`i64::MIN`) is refused although it fits.
pub const MIN_UNITS: i64 = -MAX_UNITS;
/// Units per cent (cents have scale 2).
pub const UNITS_PER_CENT: i64 = 100;
/// Units per coin (coins are whole major units).
pub const UNITS_PER_COIN: i64 = UNITS_PER_MAJOR;

/// Longest output of [`format_units_into`]: `-922337203685477.5808` is 21 bytes.
pub const FORMAT_BUF_LEN: usize = 24;

/// Why a decimal amount was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoneyError {
    /// The input is empty (or only a sign).
    Empty,
    /// The input does not match the grammar (sign, leading zeros, exponent, spaces, …).
    Syntax,
    /// More than 4 digits after the decimal point.
    TooManyDecimals,
    /// The value lies outside [`MIN_UNITS`, `MAX_UNITS`].
    OutOfRange,
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MoneyError::Empty => "empty amount",
            MoneyError::Syntax => "amount is not a plain decimal number",
            MoneyError::TooManyDecimals => "amount has more than 4 decimal places",
            MoneyError::OutOfRange => "amount is out of range",
        })
    }
}

impl std::error::Error for MoneyError {}

/// Parses a decimal amount into units.
///
/// Grammar: `-?(0|[1-9][0-9]*)(\.[0-9]{1,4})?`, nothing else (no `+`, no spaces, no exponent,
/// no `NaN`/`Infinity`, no trailing zeros beyond 4 dp). `-0` and `-0.0` are zero.
pub fn parse_units(text: &[u8]) -> Result<i64, MoneyError> {
    let (negative, digits) = match text.split_first() {
        None => return Err(MoneyError::Empty),
        Some((b'-', rest)) => (true, rest),
        Some(_) => (false, text),
    };
    let Some((&first, _)) = digits.split_first() else {
        return Err(MoneyError::Empty);
    };
    if !first.is_ascii_digit() {
        return Err(MoneyError::Syntax);
    }

    // Integer part: "0" or [1-9][0-9]*. Accumulate the magnitude in u64; 2**63 fits.
    let mut magnitude: u64 = 0;
    let mut i = 0;
    if first == b'0' {
        i = 1;
        if digits.get(1).is_some_and(u8::is_ascii_digit) {
            return Err(MoneyError::Syntax); // leading zero
        }
    } else {
        while let Some(&d) = digits.get(i) {
            if !d.is_ascii_digit() {
                break;
            }
            magnitude = magnitude
                .checked_mul(10)
                .and_then(|m| m.checked_add(u64::from(d - b'0')))
                .ok_or(MoneyError::OutOfRange)?;
            i += 1;
        }
    }
    magnitude = magnitude
        .checked_mul(UNITS_PER_MAJOR as u64)
        .ok_or(MoneyError::OutOfRange)?;

    // Fraction: "." and 1 to 4 digits.
    match digits.get(i) {
        None => {}
        Some(b'.') => {
            let frac = &digits[i + 1..];
            if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
                return Err(MoneyError::Syntax);
            }
            if frac.len() > 4 {
                return Err(MoneyError::TooManyDecimals);
            }
            let mut scaled: u64 = 0;
            for k in 0..4 {
                scaled = scaled * 10 + frac.get(k).map_or(0, |d| u64::from(d - b'0'));
            }
            magnitude = magnitude
                .checked_add(scaled)
                .ok_or(MoneyError::OutOfRange)?;
        }
        Some(_) => return Err(MoneyError::Syntax),
    }

    // The same bound on both sides: -(2**63) fits an i64 but is beyond the spec's range.
    let value = i64::try_from(magnitude).map_err(|_| MoneyError::OutOfRange)?;
    Ok(if negative { -value } else { value })
}

/// A JSON integer amount (whole major units) to units, checked.
pub fn units_from_integer(major: i64) -> Result<i64, MoneyError> {
    major
        .checked_mul(UNITS_PER_MAJOR)
        .ok_or(MoneyError::OutOfRange)
}

/// Formats units into `buf` with no trailing zeros (`"4289.1"`, `"0"`, `"-0.0001"`) and returns
/// the text. No allocation.
pub fn format_units_into(units: i64, buf: &mut [u8; FORMAT_BUF_LEN]) -> &str {
    let magnitude = units.unsigned_abs();
    let mut int_part = magnitude / UNITS_PER_MAJOR as u64;
    let mut frac = magnitude % UNITS_PER_MAJOR as u64;

    // Write right to left.
    let mut pos = FORMAT_BUF_LEN;
    if frac != 0 {
        let mut width = 4;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        for _ in 0..width {
            pos -= 1;
            buf[pos] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        pos -= 1;
        buf[pos] = b'.';
    }
    loop {
        pos -= 1;
        buf[pos] = b'0' + (int_part % 10) as u8;
        int_part /= 10;
        if int_part == 0 {
            break;
        }
    }
    if units < 0 {
        pos -= 1;
        buf[pos] = b'-';
    }
    // Only ASCII digits, '.' and '-' were written.
    std::str::from_utf8(&buf[pos..]).expect("ASCII output")
}

/// Formats units as a `String` with no trailing zeros.
pub fn format_units(units: i64) -> String {
    let mut buf = [0u8; FORMAT_BUF_LEN];
    format_units_into(units, &mut buf).to_owned()
}

/// Units to integer cents, truncating toward zero.
pub fn units_to_cents(units: i64) -> i64 {
    units / UNITS_PER_CENT
}

/// Integer cents to units; `None` outside the int64 unit range.
pub fn cents_to_units(cents: i64) -> Option<i64> {
    cents.checked_mul(UNITS_PER_CENT)
}

/// Units to whole coins, truncating toward zero.
pub fn units_to_coins(units: i64) -> i64 {
    units / UNITS_PER_COIN
}

/// Whole coins to units; `None` outside the int64 unit range.
pub fn coins_to_units(coins: i64) -> Option<i64> {
    coins.checked_mul(UNITS_PER_COIN)
}

/// `a + b` in units; `None` on overflow.
pub fn checked_add_units(a: i64, b: i64) -> Option<i64> {
    a.checked_add(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<i64, MoneyError> {
        parse_units(s.as_bytes())
    }

    #[test]
    fn accepts() {
        let table: &[(&str, i64)] = &[
            ("0", 0),
            ("-0", 0),
            ("0.0", 0),
            ("-0.0000", 0),
            ("-3", -30_000),
            ("3", 30_000),
            ("33.66", 336_600),
            ("0.0001", 1),
            ("-0.0001", -1),
            ("4289.1", 42_891_000),
            ("1.0000", 10_000),
            ("10", 100_000),
            ("100.5", 1_005_000),
            ("922337203685477.5807", i64::MAX),
            ("-922337203685477.5807", MIN_UNITS),
            ("922337203685477", 9_223_372_036_854_770_000),
            ("-922337203685477.58", -9_223_372_036_854_775_800),
        ];
        for &(text, units) in table {
            assert_eq!(p(text), Ok(units), "{text}");
        }
    }

    #[test]
    fn rejects() {
        use MoneyError::*;
        let table: &[(&str, MoneyError)] = &[
            ("", Empty),
            ("-", Empty),
            ("1.00000", TooManyDecimals),
            ("0.00001", TooManyDecimals),
            ("1.23456", TooManyDecimals),
            ("1e3", Syntax),
            ("1E3", Syntax),
            ("1.0e1", Syntax),
            ("NaN", Syntax),
            ("nan", Syntax),
            ("Infinity", Syntax),
            ("-Infinity", Syntax),
            ("inf", Syntax),
            ("+1", Syntax),
            (" 1", Syntax),
            ("1 ", Syntax),
            ("\t1", Syntax),
            ("1\n", Syntax),
            ("01", Syntax),
            ("-01", Syntax),
            ("00", Syntax),
            ("00.1", Syntax),
            ("1.", Syntax),
            ("-1.", Syntax),
            (".5", Syntax),
            ("-.5", Syntax),
            ("1..2", Syntax),
            ("1.2.3", Syntax),
            ("--1", Syntax),
            ("-+1", Syntax),
            ("1,000", Syntax),
            ("1_000", Syntax),
            ("0x10", Syntax),
            ("1.2a", Syntax),
            ("abc", Syntax),
            ("١", Syntax),
            ("1.٢", Syntax),
            ("922337203685477.5808", OutOfRange),
            ("-922337203685477.5808", OutOfRange),
            ("-922337203685477.5809", OutOfRange),
            ("922337203685478", OutOfRange),
            ("-922337203685478", OutOfRange),
            ("99999999999999999999999999999", OutOfRange),
            ("1844674407370955.1616", OutOfRange),
            ("18446744073709551616", OutOfRange),
        ];
        for &(text, err) in table {
            assert_eq!(p(text), Err(err), "{text:?}");
        }
    }

    #[test]
    fn formats() {
        let table: &[(i64, &str)] = &[
            (0, "0"),
            (1, "0.0001"),
            (-1, "-0.0001"),
            (42_891_000, "4289.1"),
            (336_600, "33.66"),
            (-30_000, "-3"),
            (10_000, "1"),
            (100_000, "10"),
            (1_005_000, "100.5"),
            (1_234_567, "123.4567"),
            (10_010, "1.001"),
            (i64::MAX, "922337203685477.5807"),
            (i64::MIN, "-922337203685477.5808"),
            (-9_223_372_036_854_770_000, "-922337203685477"),
        ];
        for &(units, text) in table {
            assert_eq!(format_units(units), text, "{units}");
            let expected = if units < MIN_UNITS {
                Err(MoneyError::OutOfRange)
            } else {
                Ok(units)
            };
            assert_eq!(p(text), expected, "{text}");
        }
    }

    #[test]
    fn round_trip_sample() {
        // A deterministic sweep over the range, including values near both ends.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let units = (x as i64 >> (x % 60)).max(MIN_UNITS);
            let text = format_units(units);
            assert_eq!(p(&text), Ok(units), "{text}");
        }
        for units in [
            MIN_UNITS,
            MIN_UNITS + 1,
            i64::MAX - 1,
            i64::MAX,
            -10_000,
            9_999,
        ] {
            assert_eq!(p(&format_units(units)), Ok(units));
        }
    }

    #[test]
    fn integers() {
        assert_eq!(units_from_integer(-3), Ok(-30_000));
        assert_eq!(
            units_from_integer(922_337_203_685_477),
            Ok(9_223_372_036_854_770_000)
        );
        assert_eq!(
            units_from_integer(-922_337_203_685_477),
            Ok(-9_223_372_036_854_770_000)
        );
        assert_eq!(
            units_from_integer(922_337_203_685_478),
            Err(MoneyError::OutOfRange)
        );
        assert_eq!(
            units_from_integer(-922_337_203_685_478),
            Err(MoneyError::OutOfRange)
        );
        assert_eq!(units_from_integer(i64::MAX), Err(MoneyError::OutOfRange));
    }

    #[test]
    fn conversions_truncate_toward_zero() {
        assert_eq!(units_to_cents(12_345), 123);
        assert_eq!(units_to_cents(-12_345), -123);
        assert_eq!(units_to_cents(99), 0);
        assert_eq!(units_to_cents(-99), 0);
        assert_eq!(units_to_cents(i64::MIN), i64::MIN / 100);
        assert_eq!(units_to_coins(19_999), 1);
        assert_eq!(units_to_coins(-19_999), -1);
        assert_eq!(units_to_coins(i64::MAX), 922_337_203_685_477);
        assert_eq!(units_to_coins(i64::MIN), -922_337_203_685_477);
    }

    #[test]
    fn conversions_checked() {
        assert_eq!(cents_to_units(123), Some(12_300));
        assert_eq!(cents_to_units(-5), Some(-500));
        assert_eq!(cents_to_units(i64::MAX / 100), Some(i64::MAX / 100 * 100));
        assert_eq!(cents_to_units(i64::MAX / 100 + 1), None);
        assert_eq!(cents_to_units(i64::MIN / 100), Some(i64::MIN / 100 * 100));
        assert_eq!(cents_to_units(i64::MIN / 100 - 1), None);
        assert_eq!(coins_to_units(10), Some(100_000));
        assert_eq!(
            coins_to_units(922_337_203_685_477),
            Some(9_223_372_036_854_770_000)
        );
        assert_eq!(coins_to_units(922_337_203_685_478), None);
        assert_eq!(coins_to_units(-922_337_203_685_478), None);
        assert_eq!(checked_add_units(i64::MAX, 0), Some(i64::MAX));
        assert_eq!(checked_add_units(i64::MAX, 1), None);
        assert_eq!(checked_add_units(i64::MIN, -1), None);
        assert_eq!(checked_add_units(i64::MIN, i64::MAX), Some(-1));
    }
}
