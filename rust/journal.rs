//! The journal writer's record encoder: one pending-journal stream entry to one journal line.
//!
//! The reference is the Python path of `walletgate.journal.records` (`journal_record_and_ts`,
//! `orjson.dumps` of the record, `meta_of`). This module produces the same bytes and the same
//! metadata without building Python objects, but only for the entries it can prove it handles
//! exactly as the reference does: [`encode_record`] returns `None` for everything else (a
//! malformed entry, a duplicate field, an integer written as `"5\n"`, a float in `refs`, an
//! `fx` that is not a list of four strings per entry, ...), and the caller then runs the
//! reference path for that entry. Being conservative costs nothing but speed on odd entries.
//!
//! What the reference does, and therefore what the output must match:
//!
//! * stream values are decoded as strict UTF-8;
//! * integer fields match `-?(0|[1-9][0-9]*)` and fit in `i64`; `seq` is at least 1;
//! * `result` becomes an integer when it is such a literal of at most 18 characters;
//! * `refs` is parsed (`[]` reads as `{}`) and written back by orjson: compact, keys in
//!   document order, strings escaped as orjson does;
//! * `fx` is `{}` (no entry) or a list of `[key, field, value, ttl]` strings, `ttl` being
//!   `"del"` or ASCII digits;
//! * the key map expires `max(ttl)` seconds (or the configured TTL when that is 0) after the
//!   record's second; other keys are the `tx:` keys of `fx` besides the record's own, sorted.

use crate::json::{self, Value, STRING_STOP};

/// The fields of a stream entry that the journal line names (see `wg_journal` in the Lua
/// prelude): their positions in the table of fields found (see [`field_index`]).
const TS: usize = 0;
const TENANT: usize = 1;
const PLAYER: usize = 2;
const CURRENCY: usize = 3;
const SEQ: usize = 4;
const KIND: usize = 5;
const KEY: usize = 6;
const DELTA: usize = 7;
const BAL: usize = 8;
const PROTO: usize = 9;
const RESULT: usize = 10;
const FP: usize = 11;
const REFS: usize = 12;
const FX: usize = 13;
const GDELTA: usize = 14;
const GBAL: usize = 15;
const REQUIRED_FIELDS: usize = 14;
const KNOWN_FIELDS: usize = 16;

fn field_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"ts" => TS,
        b"tenant" => TENANT,
        b"player" => PLAYER,
        b"currency" => CURRENCY,
        b"seq" => SEQ,
        b"kind" => KIND,
        b"key" => KEY,
        b"delta" => DELTA,
        b"bal" => BAL,
        b"proto" => PROTO,
        b"result" => RESULT,
        b"fp" => FP,
        b"refs" => REFS,
        b"fx" => FX,
        b"gdelta" => GDELTA,
        b"gbal" => GBAL,
        _ => return None,
    })
}

/// `datetime` formats years up to 9999: 10000-01-01T00:00:00Z in microseconds.
const TS_LIMIT_US: i64 = 253_402_300_800_000_000;
/// Nesting allowed in `refs` (orjson itself refuses to write more than 254 levels).
const REFS_MAX_DEPTH: usize = 64;
/// Integers of at most this many digits are exact for orjson and fit in `i64`.
const SAFE_DIGITS: usize = 18;
const TRANSACTION_PREFIX: &str = "tx:";

/// What the writer needs of a record besides its line (the Python `RecordMeta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo<'a> {
    pub tenant: &'a str,
    pub player: &'a str,
    pub currency: &'a str,
    pub seq: i64,
    pub key: &'a str,
    pub protocol: &'a str,
    pub keymap_expire_at_s: i64,
    /// The other transaction keys the record wrote, sorted and without duplicates.
    pub other_keys: Vec<String>,
}

/// Appends the journal line of one stream entry (without its newline) to `out`.
///
/// `fields` is the entry's flat `[name, value, ...]` list. Returns `None`, with `out` as it
/// was, when the entry must take the reference path instead.
pub fn encode_record<'a>(
    fields: &[&'a [u8]],
    sid: &str,
    bucket: i64,
    batch: Option<i64>,
    keymap_ttl_s: i64,
    out: &mut Vec<u8>,
) -> Option<RecordInfo<'a>> {
    let start = out.len();
    let info = encode_into(fields, sid, bucket, batch, keymap_ttl_s, out);
    if info.is_none() {
        out.truncate(start);
    }
    info
}

fn encode_into<'a>(
    fields: &[&'a [u8]],
    sid: &str,
    bucket: i64,
    batch: Option<i64>,
    keymap_ttl_s: i64,
    out: &mut Vec<u8>,
) -> Option<RecordInfo<'a>> {
    if fields.len() % 2 != 0 {
        return None;
    }
    let mut known: [Option<&'a str>; KNOWN_FIELDS] = [None; KNOWN_FIELDS];
    let mut extra: Vec<(&'a str, &'a str)> = Vec::new();
    for pair in fields.chunks_exact(2) {
        let (name, value) = (pair[0], pair[1]);
        let value = std::str::from_utf8(value).ok()?;
        match field_index(name) {
            Some(index) => {
                if known[index].replace(value).is_some() {
                    return None; // a duplicate: the reference keeps the last value
                }
            }
            None => {
                let name = std::str::from_utf8(name).ok()?;
                if extra.iter().any(|(other, _)| *other == name) {
                    return None;
                }
                extra.push((name, value));
            }
        }
    }
    let mut required = [""; REQUIRED_FIELDS];
    for (slot, value) in required.iter_mut().zip(known) {
        *slot = value?;
    }

    let ts_us = strict_i64(required[TS])?;
    if !(0..TS_LIMIT_US).contains(&ts_us) {
        return None;
    }
    let seq = strict_i64(required[SEQ])?;
    if seq < 1 {
        return None;
    }
    let delta = strict_i64(required[DELTA])?;
    let balance = strict_i64(required[BAL])?;
    let gen_delta = optional_i64(known[GDELTA])?;
    let gen_balance = optional_i64(known[GBAL])?;

    out.extend_from_slice(b"{\"ts\":\"");
    format_ts(ts_us, out);
    out.extend_from_slice(b"\",\"tenant\":");
    write_str(required[TENANT], out);
    out.extend_from_slice(b",\"player\":");
    write_str(required[PLAYER], out);
    out.extend_from_slice(b",\"currency\":");
    write_str(required[CURRENCY], out);
    out.extend_from_slice(b",\"seq\":");
    write_i64(seq, out);
    out.extend_from_slice(b",\"kind\":");
    write_str(required[KIND], out);
    out.extend_from_slice(b",\"key\":");
    write_str(required[KEY], out);
    out.extend_from_slice(b",\"delta_units\":");
    write_i64(delta, out);
    out.extend_from_slice(b",\"balance_after_units\":");
    write_i64(balance, out);
    if let Some(value) = gen_delta {
        out.extend_from_slice(b",\"gen_delta_units\":");
        write_i64(value, out);
    }
    if let Some(value) = gen_balance {
        out.extend_from_slice(b",\"gen_after_units\":");
        write_i64(value, out);
    }
    out.extend_from_slice(b",\"protocol\":");
    write_str(required[PROTO], out);
    out.extend_from_slice(b",\"result\":");
    write_result(required[RESULT], out)?;
    out.extend_from_slice(b",\"fp\":");
    write_str(required[FP], out);
    out.extend_from_slice(b",\"refs\":");
    write_refs(required[REFS], out)?;
    out.extend_from_slice(b",\"fx\":");
    let fx = write_fx(required[FX], required[KEY], out)?;
    if !extra.is_empty() {
        out.extend_from_slice(b",\"extra\":{");
        for (index, (name, value)) in extra.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_str(name, out);
            out.push(b':');
            write_str(value, out);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b",\"sid\":");
    write_str(sid, out);
    out.extend_from_slice(b",\"bucket\":");
    write_i64(bucket, out);
    if let Some(batch) = batch {
        out.extend_from_slice(b",\"batch\":");
        write_i64(batch, out);
    }
    out.push(b'}');

    let ttl_s = if fx.max_ttl_s == 0 {
        keymap_ttl_s
    } else {
        fx.max_ttl_s
    };
    Some(RecordInfo {
        tenant: required[TENANT],
        player: required[PLAYER],
        currency: required[CURRENCY],
        seq,
        key: required[KEY],
        protocol: required[PROTO],
        keymap_expire_at_s: (ts_us / 1_000_000).checked_add(ttl_s)?,
        other_keys: fx.other_keys,
    })
}

/// An optional integer field: `Some(None)` when absent, `None` when not a strict integer.
fn optional_i64(text: Option<&str>) -> Option<Option<i64>> {
    match text {
        None => Some(None),
        Some(text) => strict_i64(text).map(Some),
    }
}

/// `-?(0|[1-9][0-9]*)` within `i64` (no sign but `-`, no leading zero, nothing around it).
fn strict_i64(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        all => (false, all),
    };
    match digits {
        [] => return None,
        [b'0', _, ..] => return None,
        _ => {}
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(digit - b'0');
        // Accumulate negatively so that i64::MIN is reachable.
        value = value.checked_mul(10)?.checked_sub(digit)?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

fn write_i64(value: i64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut position = buf.len();
    let mut rest = value.unsigned_abs();
    loop {
        position -= 1;
        buf[position] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[position..]);
}

/// Protocol codes that are integer literals of at most 18 characters stay integers.
fn write_result(text: &str, out: &mut Vec<u8>) -> Option<()> {
    if text.ends_with('\n') {
        // The reference's `$` also matches before a final newline ("5\n" reads as 5).
        return None;
    }
    match strict_i64(text) {
        Some(value) if text.len() <= SAFE_DIGITS => write_i64(value, out),
        _ => write_str(text, out),
    }
    Some(())
}

/// A JSON string exactly as orjson writes it: only `"`, `\` and control characters are escaped
/// (`\b \t \n \f \r` short, the others as lowercase `\u00xx`); everything else is raw UTF-8.
fn write_str(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.push(b'"');
    let mut run = 0;
    loop {
        let index = find_escape(bytes, run);
        out.extend_from_slice(&bytes[run..index]);
        let Some(&byte) = bytes.get(index) else {
            break;
        };
        run = index + 1;
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 15)],
            ]),
        }
    }
    out.push(b'"');
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for `0 <= ts_us < TS_LIMIT_US`.
fn format_ts(ts_us: i64, out: &mut Vec<u8>) {
    let seconds = ts_us / 1_000_000;
    let micros = ts_us % 1_000_000;
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let second_of_day = seconds % 86_400;
    let two = |value: i64, out: &mut Vec<u8>| {
        out.push(b'0' + (value / 10) as u8);
        out.push(b'0' + (value % 10) as u8);
    };
    two(year / 100, out);
    two(year % 100, out);
    out.push(b'-');
    two(month, out);
    out.push(b'-');
    two(day, out);
    out.push(b'T');
    two(second_of_day / 3600, out);
    out.push(b':');
    two(second_of_day / 60 % 60, out);
    out.push(b':');
    two(second_of_day % 60, out);
    out.push(b'.');
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (days >= 0), after Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `refs` as orjson writes the object it parses (`[]` reads as `{}`).
fn write_refs(text: &str, out: &mut Vec<u8>) -> Option<()> {
    match json::parse(text.as_bytes(), REFS_MAX_DEPTH).ok()? {
        Value::Array(items) if items.is_empty() => out.extend_from_slice(b"{}"),
        value @ Value::Object(_) => write_value(&value, out)?,
        _ => return None,
    }
    Some(())
}

/// A parsed value as orjson writes it; `None` for numbers whose Python value it would not
/// keep exactly (floats, very long integers).
fn write_value(value: &Value, out: &mut Vec<u8>) -> Option<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Integer(literal) => {
            if literal.trim_start_matches('-').len() > SAFE_DIGITS {
                return None;
            }
            write_i64(strict_i64(literal)?, out);
        }
        Value::Decimal(_) => return None,
        Value::String(text) => write_str(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(members) => {
            out.push(b'{');
            for (index, (key, item)) in members.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_str(key, out);
                out.push(b':');
                write_value(item, out)?;
            }
            out.push(b'}');
        }
    }
    Some(())
}

/// What the key map needs from `fx`.
struct FxSummary {
    max_ttl_s: i64,
    other_keys: Vec<String>,
}

/// `fx` as the reference writes its entries: `{}` is no entry, otherwise a list of
/// `[key, field, value, ttl]` strings with a `ttl` of `"del"` or ASCII digits.
///
/// cjson writes `fx` compactly and almost never needs an escape, and then it is already what
/// orjson writes: the text is checked once and copied. Otherwise (whitespace, escapes such as
/// cjson's `\/`) it is checked and written again string by string.
fn write_fx(text: &str, record_key: &str, out: &mut Vec<u8>) -> Option<FxSummary> {
    if text == "{}" {
        out.extend_from_slice(b"[]");
        return Some(FxSummary {
            max_ttl_s: 0,
            other_keys: Vec::new(),
        });
    }
    let (summary, verbatim) = scan_fx(text, record_key, None)?;
    if verbatim {
        out.extend_from_slice(text.as_bytes());
        Some(summary)
    } else {
        scan_fx(text, record_key, Some(out)).map(|(summary, _)| summary)
    }
}

/// Checks `fx`, writing it to `out` when given; also returns whether the text needed no change.
fn scan_fx(
    text: &str,
    record_key: &str,
    mut out: Option<&mut Vec<u8>>,
) -> Option<(FxSummary, bool)> {
    let mut summary = FxSummary {
        max_ttl_s: 0,
        other_keys: Vec::new(),
    };
    let mut scanner = Scanner {
        input: text.as_bytes(),
        text,
        pos: 0,
        scratch: String::new(),
        verbatim: true,
    };
    scanner.skip_ws();
    scanner.expect(b'[')?;
    emit(&mut out, b"[");
    scanner.skip_ws();
    if scanner.peek()? == b']' {
        scanner.pos += 1;
    } else {
        let mut first = true;
        loop {
            emit(&mut out, if first { b"[" } else { b",[" });
            first = false;
            scanner.expect(b'[')?;
            for part in 0..4 {
                scanner.skip_ws();
                let value = scanner.string()?;
                if let Some(out) = out.as_deref_mut() {
                    if part > 0 {
                        out.push(b',');
                    }
                    write_str(value, out);
                }
                if part == 0 {
                    if let Some(other) = value.strip_prefix(TRANSACTION_PREFIX) {
                        if other != record_key {
                            summary.other_keys.push(other.to_owned());
                        }
                    }
                } else if part == 3 && value != "del" {
                    summary.max_ttl_s = summary.max_ttl_s.max(ttl_seconds(value)?);
                }
                scanner.skip_ws();
                scanner.expect(if part < 3 { b',' } else { b']' })?;
            }
            emit(&mut out, b"]");
            scanner.skip_ws();
            match scanner.peek()? {
                b',' => {
                    scanner.pos += 1;
                    scanner.skip_ws();
                }
                b']' => {
                    scanner.pos += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    scanner.skip_ws();
    if scanner.pos != scanner.input.len() {
        return None;
    }
    emit(&mut out, b"]");
    summary.other_keys.sort_unstable();
    summary.other_keys.dedup();
    Some((summary, scanner.verbatim))
}

fn emit(out: &mut Option<&mut Vec<u8>>, bytes: &[u8]) {
    if let Some(out) = out.as_deref_mut() {
        out.extend_from_slice(bytes);
    }
}

/// The longest TTL a record may name: `walletgate.config.MAX_TTL_S`, the longest retention a
/// config may set (ten years). A longer one makes the entry take the reference path, which
/// quarantines it.
const MAX_TTL_S: i64 = 10 * 365 * 86_400;

/// A TTL of ASCII digits (leading zeros allowed) as seconds; `None` when empty, not digits, too
/// long to be exact, or longer than [`MAX_TTL_S`].
fn ttl_seconds(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = text.trim_start_matches('0');
    if significant.len() > SAFE_DIGITS {
        return None;
    }
    let seconds = significant
        .bytes()
        .fold(0i64, |acc, digit| acc * 10 + i64::from(digit - b'0'));
    (seconds <= MAX_TTL_S).then_some(seconds)
}

/// Reads the strings of an `fx` list. Strict JSON: any error makes the entry take the
/// reference path (which reports it as malformed when orjson refuses it too).
struct Scanner<'a> {
    input: &'a [u8],
    text: &'a str,
    pos: usize,
    scratch: String,
    /// No whitespace and no escape so far: the text is as orjson would write it.
    verbatim: bool,
}

impl<'a> Scanner<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.input.get(self.pos) {
            self.pos += 1;
            self.verbatim = false;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        if self.peek()? != byte {
            return None;
        }
        self.pos += 1;
        Some(())
    }

    fn hex4(&mut self) -> Option<u32> {
        let quad = self.input.get(self.pos..self.pos + 4)?;
        let mut value = 0u32;
        for &b in quad {
            value = (value << 4) | char::from(b).to_digit(16)?;
        }
        self.pos += 4;
        Some(value)
    }

    /// The decoded text of the string at `pos` (escapes resolved, lone surrogates refused).
    fn string(&mut self) -> Option<&str> {
        self.expect(b'"')?;
        let start = self.pos;
        self.pos = find_escape(self.input, self.pos);
        match self.peek()? {
            b'"' => {
                self.pos += 1;
                return Some(&self.text[start..self.pos - 1]);
            }
            b'\\' => {}
            _ => return None, // a raw control character
        }
        self.verbatim = false;
        self.scratch.clear();
        self.scratch.push_str(&self.text[start..self.pos]);
        loop {
            let run = self.pos;
            self.pos = find_escape(self.input, self.pos);
            // `run..pos` ends before an ASCII byte, so it is whole UTF-8.
            self.scratch.push_str(&self.text[run..self.pos]);
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(&self.scratch);
                }
                b'\\' => {
                    self.pos += 1;
                    let escaped = self.peek()?;
                    self.pos += 1;
                    let c = match escaped {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let unit = self.hex4()?;
                            let code = match unit {
                                0xD800..=0xDBFF => {
                                    if self.input.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                        return None;
                                    }
                                    self.pos += 2;
                                    let low = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&low) {
                                        return None;
                                    }
                                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return None,
                                _ => unit,
                            };
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    self.scratch.push(c);
                }
                _ => return None,
            }
        }
    }
}

/// The position of the first byte at or after `from` that orjson escapes (`"`, `\` or a
/// control character), or the length of `bytes`. Eight bytes at a time.
#[inline]
fn find_escape(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut position = from;
    while let Some(chunk) = bytes.get(position..position + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        // Each term flags its bytes (a zero byte, a byte below 0x20) exactly up to the first
        // flagged one, which is all that is used.
        let found = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | word.wrapping_sub(ONES * 0x20) & !word)
            & HIGHS;
        if found != 0 {
            return position + (found.trailing_zeros() / 8) as usize;
        }
        position += 8;
    }
    while let Some(&byte) = bytes.get(position) {
        if STRING_STOP[usize::from(byte)] {
            break;
        }
        position += 1;
    }
    position
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fx: &str, refs: &str) -> Vec<(String, String)> {
        [
            ("ts", "1700000000123456"),
            ("tenant", "t"),
            ("player", "p"),
            ("currency", "usd"),
            ("seq", "7"),
            ("kind", "pay"),
            ("key", "bill-1"),
            ("delta", "-100"),
            ("bal", "900"),
            ("proto", "midas"),
            ("result", "90013"),
            ("fp", "abc"),
            ("refs", refs),
            ("fx", fx),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
    }

    fn encode(pairs: &[(String, String)]) -> Option<(String, RecordInfo<'static>)> {
        let flat: Vec<&'static [u8]> = pairs
            .iter()
            .flat_map(|(n, v)| [n.as_bytes(), v.as_bytes()])
            .map(|b| &*Box::leak(b.to_vec().into_boxed_slice()))
            .collect();
        let mut out = b"prefix".to_vec();
        match encode_record(&flat, "1-0", 3, Some(12), 604_800, &mut out) {
            Some(info) => Some((String::from_utf8(out[6..].to_vec()).unwrap(), info)),
            None => {
                assert_eq!(
                    out, b"prefix",
                    "a refused entry leaves the buffer as it was"
                );
                None
            }
        }
    }

    #[test]
    fn a_record() {
        let fx = r#"[["acct","bal:usd","900","0"],["tx:bill-1","fp","a\/b","604800"],["tx:other","x","\u00e9\ud83d\ude00","del"],["tx:b","y","","7776000"],["tx:other","z","","5"]]"#;
        let mut pairs = entry(fx, r#"{"bill_no":"B1","n":-0,"l":[1,true,null,{"k":"v"}]}"#);
        pairs.push(("round".into(), "r\"9\u{1}".into()));
        pairs.push(("gbal".into(), "20".into()));
        let (line, info) = encode(&pairs).unwrap();
        assert_eq!(
            line,
            concat!(
                r#"{"ts":"2023-11-14T22:13:20.123456Z","tenant":"t","player":"p","currency":"usd","#,
                r#""seq":7,"kind":"pay","key":"bill-1","delta_units":-100,"balance_after_units":900,"#,
                r#""gen_after_units":20,"protocol":"midas","result":90013,"fp":"abc","#,
                r#""refs":{"bill_no":"B1","n":0,"l":[1,true,null,{"k":"v"}]},"#,
                r#""fx":[["acct","bal:usd","900","0"],["tx:bill-1","fp","a/b","604800"],"#,
                "[\"tx:other\",\"x\",\"\u{e9}\u{1F600}\",\"del\"],[\"tx:b\",\"y\",\"\",\"7776000\"],",
                r#"["tx:other","z","","5"]],"extra":{"round":"r\"9\u0001"},"sid":"1-0","bucket":3,"#,
                r#""batch":12}"#
            )
        );
        assert_eq!(info.seq, 7);
        assert_eq!(info.keymap_expire_at_s, 1_700_000_000 + 7_776_000);
        assert_eq!(info.other_keys, vec!["b".to_owned(), "other".to_owned()]);
    }

    #[test]
    fn empty_fx_and_refs() {
        let (line, info) = encode(&entry("{}", "[]")).unwrap();
        assert!(line.contains(r#""refs":{},"fx":[],"sid""#), "{line}");
        assert_eq!(info.keymap_expire_at_s, 1_700_000_000 + 604_800);
        assert!(info.other_keys.is_empty());
        let (line, _) = encode(&entry(" [ ] ", " { } ")).unwrap();
        assert!(line.contains(r#""refs":{},"fx":[],"sid""#), "{line}");
    }

    #[test]
    fn odd_entries_take_the_reference_path() {
        for (fx, refs) in [
            ("{ }", "{}"),
            ("[[\"a\",\"b\",\"c\",\"-1\"]]", "{}"),
            ("[[\"a\",\"b\",\"c\",\"\"]]", "{}"),
            ("[[\"a\",\"b\",3,\"0\"]]", "{}"),
            ("[[\"a\",\"b\",\"c\"]]", "{}"),
            ("[[\"a\",\"b\",\"c\",\"0\"],]", "{}"),
            ("[[\"\\ud800\",\"b\",\"c\",\"0\"]]", "{}"),
            ("[[\"a\",\"b\",\"c\",\"1234567890123456789\"]]", "{}"),
            ("[]", "{\"a\":1.5}"),
            ("[]", "{\"a\":1234567890123456789}"),
            ("[]", "{\"a\":1,\"a\":2}"),
            ("[]", "[1]"),
            ("[]", "\"x\""),
        ] {
            assert!(encode(&entry(fx, refs)).is_none(), "{fx} {refs}");
        }
        let base = entry("{}", "{}");
        for (name, value) in [
            ("ts", "-1"),
            ("ts", "253402300800000000"),
            ("ts", "01"),
            ("seq", "0"),
            ("seq", "5\n"),
            ("delta", "9223372036854775808"),
            ("bal", "+1"),
            ("result", "5\n"),
        ] {
            let pairs: Vec<_> = base
                .iter()
                .map(|(n, v)| {
                    (
                        n.clone(),
                        if n == name {
                            value.to_owned()
                        } else {
                            v.clone()
                        },
                    )
                })
                .collect();
            assert!(encode(&pairs).is_none(), "{name}={value:?}");
        }
        let mut duplicate = base.clone();
        duplicate.push(("seq".into(), "8".into()));
        assert!(encode(&duplicate).is_none());
        let missing: Vec<_> = base.iter().filter(|(n, _)| n != "fp").cloned().collect();
        assert!(encode(&missing).is_none());
        let flat: Vec<&[u8]> = vec![b"ts", b"\xff"];
        assert!(encode_record(&flat, "1-0", 0, None, 1, &mut Vec::new()).is_none());
    }

    #[test]
    fn results() {
        for (result, written) in [
            ("1", "1"),
            ("-0", "0"),
            ("123456789012345678", "123456789012345678"),
            ("1234567890123456789", "\"1234567890123456789\""),
            ("INSUFFICIENT_FUNDS", "\"INSUFFICIENT_FUNDS\""),
            ("01", "\"01\""),
        ] {
            let pairs: Vec<_> = entry("{}", "{}")
                .into_iter()
                .map(|(n, v)| {
                    let v = if n == "result" { result.to_owned() } else { v };
                    (n, v)
                })
                .collect();
            let (line, _) = encode(&pairs).unwrap();
            assert!(line.contains(&format!(",\"result\":{written},")), "{line}");
        }
    }

    #[test]
    fn integers() {
        assert_eq!(strict_i64("0"), Some(0));
        assert_eq!(strict_i64("-0"), Some(0));
        assert_eq!(strict_i64("9223372036854775807"), Some(i64::MAX));
        assert_eq!(strict_i64("-9223372036854775808"), Some(i64::MIN));
        for bad in [
            "",
            "-",
            "01",
            "-01",
            "9223372036854775808",
            "1 ",
            " 1",
            "1e3",
            "+1",
        ] {
            assert_eq!(strict_i64(bad), None, "{bad:?}");
        }
        for value in [0, 7, -7, i64::MAX, i64::MIN, 1_000_000] {
            let mut out = Vec::new();
            write_i64(value, &mut out);
            assert_eq!(out, value.to_string().as_bytes());
        }
    }

    #[test]
    fn timestamps() {
        for (ts_us, text) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400_000_001, "2000-02-29T00:00:00.000001Z"),
            (1_700_000_000_123_456, "2023-11-14T22:13:20.123456Z"),
            (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
        ] {
            let mut out = Vec::new();
            format_ts(ts_us, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn find_escape_matches_a_byte_scan() {
        let sample = "abcdefghij\"klm\\nopqrstuvw\u{1f}xyzé€😀\u{7f}0123456789\"";
        let bytes = sample.as_bytes();
        for special in [b'"', b'\\', 0, 0x1f, b' ', 0x7f, 0x80, 0xff] {
            for at in 0..24 {
                let mut input = vec![b'a'; 24];
                input[at] = special;
                let naive = input.iter().position(|&b| STRING_STOP[usize::from(b)]);
                assert_eq!(
                    find_escape(&input, 0),
                    naive.unwrap_or(24),
                    "{special} at {at}"
                );
            }
        }
        for from in 0..=bytes.len() {
            let naive = bytes[from..]
                .iter()
                .position(|&b| STRING_STOP[usize::from(b)])
                .map_or(bytes.len(), |i| from + i);
            assert_eq!(find_escape(bytes, from), naive, "from {from}");
        }
    }

    #[test]
    fn strings_are_escaped_as_orjson_does() {
        let mut out = Vec::new();
        write_str(
            "a\"b\\c/\u{8}\t\n\u{c}\r\u{0}\u{1f}\u{7f}\u{2028}é",
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c/\\b\\t\\n\\f\\r\\u0000\\u001f\u{7f}\u{2028}é\""
        );
    }
}
