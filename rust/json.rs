//! A strict JSON reader (RFC 8259 grammar, I-JSON string rules).
//!
//! * The whole input must be valid UTF-8 (no BOM) holding exactly one value; trailing data other
//!   than JSON whitespace is an error.
//! * Object keys must be unique at every depth.
//! * Strings: no raw control characters; `\u` escapes are decoded, surrogate pairs are joined and
//!   a lone surrogate is an error (Rust strings, like I-JSON, cannot hold one).
//! * Numbers are never converted to floats: integers and other numbers are handed over as their
//!   exact literal text.
//! * Nesting is limited to `max_depth` containers, and the reader is iterative: its own stack
//!   lives on the heap, so no input can overflow the machine stack.
//!
//! The reader is generic over a [`Builder`], so a caller can build its own values directly while
//! parsing (the Python binding builds `dict`/`list`/`str`/`int` without an intermediate tree).
//! [`parse`] uses [`TreeBuilder`] to produce a plain [`Value`] tree.

use std::collections::HashSet;
use std::fmt;

/// The largest `max_depth` accepted. It keeps the recursive `Drop` of a [`Value`] tree shallow.
pub const MAX_DEPTH_LIMIT: usize = 10_000;

/// What went wrong, without the position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is not valid UTF-8.
    InvalidUtf8,
    /// The input ended inside a value.
    UnexpectedEnd,
    /// A byte that cannot start or continue the current token.
    UnexpectedChar,
    /// Data after the single top-level value.
    TrailingData,
    /// A malformed number literal.
    InvalidNumber,
    /// An unknown escape or a malformed `\u` escape.
    InvalidEscape,
    /// A `\u` escape of a lone surrogate.
    LoneSurrogate,
    /// A raw control character (U+0000 to U+001F) inside a string.
    ControlCharacter,
    /// The same key twice in one object.
    DuplicateKey,
    /// More nested containers than `max_depth`.
    TooDeep,
    /// `max_depth` above [`MAX_DEPTH_LIMIT`].
    DepthLimitTooLarge,
}

impl ErrorKind {
    fn message(self) -> &'static str {
        match self {
            ErrorKind::InvalidUtf8 => "invalid UTF-8",
            ErrorKind::UnexpectedEnd => "unexpected end of input",
            ErrorKind::UnexpectedChar => "unexpected character",
            ErrorKind::TrailingData => "trailing data after the JSON value",
            ErrorKind::InvalidNumber => "invalid number",
            ErrorKind::InvalidEscape => "invalid escape",
            ErrorKind::LoneSurrogate => "lone surrogate in \\u escape",
            ErrorKind::ControlCharacter => "control character in string",
            ErrorKind::DuplicateKey => "duplicate key",
            ErrorKind::TooDeep => "nesting too deep",
            ErrorKind::DepthLimitTooLarge => "max_depth is too large",
        }
    }
}

/// A JSON syntax error at a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Byte offset into the input where it was found.
    pub offset: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind.message(), self.offset)
    }
}

impl std::error::Error for JsonError {}

/// A syntax error, or an error raised by the [`Builder`].
#[derive(Debug)]
pub enum ParseError<E> {
    /// The input is not strict JSON.
    Syntax(JsonError),
    /// The builder failed (for example a Python `MemoryError`).
    Build(E),
}

impl<E> From<JsonError> for ParseError<E> {
    fn from(e: JsonError) -> Self {
        ParseError::Syntax(e)
    }
}

/// Receives the values of a document as the reader finds them, innermost first.
pub trait Builder {
    /// A finished value.
    type Value;
    /// A key, made before its value is read.
    type Key;
    /// An object under construction.
    type Object;
    /// An array under construction.
    type Array;
    /// The builder's own error.
    type Error;

    /// `null`.
    fn null(&mut self) -> Result<Self::Value, Self::Error>;
    /// `true` or `false`.
    fn boolean(&mut self, value: bool) -> Result<Self::Value, Self::Error>;
    /// An integer literal `-?(0|[1-9][0-9]*)`, exactly as written.
    fn integer(&mut self, literal: &str) -> Result<Self::Value, Self::Error>;
    /// Any other number literal (with a fraction or an exponent), exactly as written.
    fn decimal(&mut self, literal: &str) -> Result<Self::Value, Self::Error>;
    /// A decoded string.
    fn string(&mut self, value: &str) -> Result<Self::Value, Self::Error>;
    /// A decoded object key.
    fn key(&mut self, key: &str) -> Result<Self::Key, Self::Error>;
    /// A new, empty object.
    fn begin_object(&mut self) -> Result<Self::Object, Self::Error>;
    /// Adds a member. Returns `Ok(false)` if the key is already in the object; the reader then
    /// fails with [`ErrorKind::DuplicateKey`].
    fn insert(
        &mut self,
        object: &mut Self::Object,
        key: Self::Key,
        value: Self::Value,
    ) -> Result<bool, Self::Error>;
    /// Turns a complete object into a value.
    fn end_object(&mut self, object: Self::Object) -> Result<Self::Value, Self::Error>;
    /// A new, empty array.
    fn begin_array(&mut self) -> Result<Self::Array, Self::Error>;
    /// Appends an element.
    fn push(&mut self, array: &mut Self::Array, value: Self::Value) -> Result<(), Self::Error>;
    /// Turns a complete array into a value.
    fn end_array(&mut self, array: Self::Array) -> Result<Self::Value, Self::Error>;
}

// ---------------------------------------------------------------------------------------------
// The reader
// ---------------------------------------------------------------------------------------------

/// Bytes a JSON string cannot hold as they are: `"`, `\` and control characters. They end the
/// reader's fast scan of a string, and the journal writer escapes exactly these.
pub(crate) static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

enum Frame<B: Builder> {
    /// An object, and the key (with its offset) whose value is being read.
    Object(B::Object, Option<(B::Key, usize)>),
    Array(B::Array),
}

struct Reader<'a> {
    input: &'a [u8],
    text: &'a str,
    pos: usize,
    /// Decoded text of the last string that had escapes.
    scratch: String,
}

/// Where a decoded string lives: in the input, or in the reader's scratch buffer.
enum Decoded {
    Borrowed(usize, usize),
    Scratch,
}

impl<'a> Reader<'a> {
    #[inline]
    fn err(&self, kind: ErrorKind) -> JsonError {
        JsonError {
            kind,
            offset: self.pos,
        }
    }

    /// `UnexpectedEnd` at the end of the input, else `kind`.
    fn end_or(&self, kind: ErrorKind) -> JsonError {
        if self.pos >= self.input.len() {
            self.err(ErrorKind::UnexpectedEnd)
        } else {
            self.err(kind)
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(&b) = self.input.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.pos += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Result<u8, JsonError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.err(ErrorKind::UnexpectedEnd))
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Result<(), JsonError> {
        if self.peek()? != byte {
            return Err(self.err(ErrorKind::UnexpectedChar));
        }
        self.pos += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        for &expected in word {
            match self.input.get(self.pos) {
                Some(&b) if b == expected => self.pos += 1,
                Some(_) => return Err(self.err(ErrorKind::UnexpectedChar)),
                None => return Err(self.err(ErrorKind::UnexpectedEnd)),
            }
        }
        Ok(())
    }

    #[inline]
    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.input.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Reads a number; returns its literal and whether it is an integer.
    fn number(&mut self) -> Result<(&'a str, bool), JsonError> {
        let start = self.pos;
        if self.input[self.pos] == b'-' {
            self.pos += 1;
        }
        match self.input.get(self.pos) {
            Some(b'0') => {
                self.pos += 1;
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            Some(_) => return Err(self.err(ErrorKind::InvalidNumber)),
            None => return Err(self.err(ErrorKind::UnexpectedEnd)),
        }
        let mut integer = true;
        if self.input.get(self.pos) == Some(&b'.') {
            integer = false;
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.end_or(ErrorKind::InvalidNumber));
            }
        }
        if matches!(self.input.get(self.pos), Some(b'e' | b'E')) {
            integer = false;
            self.pos += 1;
            if matches!(self.input.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.end_or(ErrorKind::InvalidNumber));
            }
        }
        // A digit right after "0" or "-0" (a leading zero) is caught by the caller as
        // unexpected data after the value.
        Ok((&self.text[start..self.pos], integer))
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let Some(quad) = self.input.get(self.pos..self.pos + 4) else {
            // Point at the first non-hex byte, or the end.
            while self.input.get(self.pos).is_some_and(u8::is_ascii_hexdigit) {
                self.pos += 1;
            }
            return Err(self.end_or(ErrorKind::InvalidEscape));
        };
        let mut value: u16 = 0;
        for (i, &b) in quad.iter().enumerate() {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => {
                    self.pos += i;
                    return Err(self.err(ErrorKind::InvalidEscape));
                }
            };
            value = (value << 4) | u16::from(digit);
        }
        self.pos += 4;
        Ok(value)
    }

    /// Reads a string whose opening quote is at `self.pos`.
    fn string(&mut self) -> Result<Decoded, JsonError> {
        self.pos += 1;
        let start = self.pos;
        // Fast path: no escapes.
        loop {
            let Some(&b) = self.input.get(self.pos) else {
                return Err(self.err(ErrorKind::UnexpectedEnd));
            };
            if STRING_STOP[usize::from(b)] {
                match b {
                    b'"' => {
                        let end = self.pos;
                        self.pos += 1;
                        return Ok(Decoded::Borrowed(start, end));
                    }
                    b'\\' => break,
                    _ => return Err(self.err(ErrorKind::ControlCharacter)),
                }
            }
            self.pos += 1;
        }
        // Slow path: decode escapes into the scratch buffer.
        self.scratch.clear();
        self.scratch.push_str(&self.text[start..self.pos]);
        loop {
            let run = self.pos;
            while let Some(&b) = self.input.get(self.pos) {
                if STRING_STOP[usize::from(b)] {
                    break;
                }
                self.pos += 1;
            }
            // `run..pos` ends before an ASCII byte, so it is a whole UTF-8 sequence.
            self.scratch.push_str(&self.text[run..self.pos]);
            let Some(&b) = self.input.get(self.pos) else {
                return Err(self.err(ErrorKind::UnexpectedEnd));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(Decoded::Scratch);
                }
                b'\\' => {
                    self.pos += 1;
                    self.escape()?;
                }
                _ => return Err(self.err(ErrorKind::ControlCharacter)),
            }
        }
    }

    /// Decodes the escape after a backslash into the scratch buffer.
    fn escape(&mut self) -> Result<(), JsonError> {
        let b = self.peek()?;
        let simple = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let escape_start = self.pos - 1;
                self.pos += 1;
                let unit = self.hex4()?;
                let c = match unit {
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by an escaped low surrogate.
                        if self.input.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            self.pos = escape_start;
                            return Err(self.err(ErrorKind::LoneSurrogate));
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            self.pos = escape_start;
                            return Err(self.err(ErrorKind::LoneSurrogate));
                        }
                        let code = 0x10000
                            + ((u32::from(unit) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        char::from_u32(code).expect("a surrogate pair is a valid scalar")
                    }
                    0xDC00..=0xDFFF => {
                        self.pos = escape_start;
                        return Err(self.err(ErrorKind::LoneSurrogate));
                    }
                    _ => char::from_u32(u32::from(unit)).expect("not a surrogate"),
                };
                self.scratch.push(c);
                return Ok(());
            }
            _ => return Err(self.err(ErrorKind::InvalidEscape)),
        };
        self.pos += 1;
        self.scratch.push(simple);
        Ok(())
    }

    #[inline]
    fn decoded(&self, d: &Decoded) -> &str {
        match *d {
            Decoded::Borrowed(start, end) => &self.text[start..end],
            Decoded::Scratch => &self.scratch,
        }
    }

    /// Reads a key (at a `"`), the `:` after it, and the whitespace before the value.
    fn key<B: Builder>(&mut self, builder: &mut B) -> Result<B::Key, ParseError<B::Error>> {
        if self.peek()? != b'"' {
            return Err(self.err(ErrorKind::UnexpectedChar).into());
        }
        let decoded = self.string()?;
        let key = builder
            .key(self.decoded(&decoded))
            .map_err(ParseError::Build)?;
        self.skip_ws();
        self.expect(b':')?;
        self.skip_ws();
        Ok(key)
    }
}

/// Parses one strict JSON document with `builder`.
///
/// `max_depth` is the number of nested containers allowed (`0` allows only a scalar; the default
/// of the Python API is 32); it may not exceed [`MAX_DEPTH_LIMIT`].
pub fn parse_with<B: Builder>(
    input: &[u8],
    max_depth: usize,
    builder: &mut B,
) -> Result<B::Value, ParseError<B::Error>> {
    let text = std::str::from_utf8(input).map_err(|e| JsonError {
        kind: ErrorKind::InvalidUtf8,
        offset: e.valid_up_to(),
    })?;
    if max_depth > MAX_DEPTH_LIMIT {
        return Err(JsonError {
            kind: ErrorKind::DepthLimitTooLarge,
            offset: 0,
        }
        .into());
    }
    let mut r = Reader {
        input,
        text,
        pos: 0,
        scratch: String::new(),
    };
    let mut stack: Vec<Frame<B>> = Vec::new();
    let build = ParseError::Build;

    r.skip_ws();
    'value: loop {
        // Read one value at `r.pos` (whitespace already skipped), or open a container.
        let mut value = match r.peek()? {
            b'{' => {
                if stack.len() >= max_depth {
                    return Err(r.err(ErrorKind::TooDeep).into());
                }
                r.pos += 1;
                r.skip_ws();
                let object = builder.begin_object().map_err(build)?;
                if r.peek()? == b'}' {
                    r.pos += 1;
                    builder.end_object(object).map_err(build)?
                } else {
                    let key_start = r.pos;
                    let key = r.key(builder)?;
                    stack.push(Frame::Object(object, Some((key, key_start))));
                    continue 'value;
                }
            }
            b'[' => {
                if stack.len() >= max_depth {
                    return Err(r.err(ErrorKind::TooDeep).into());
                }
                r.pos += 1;
                r.skip_ws();
                let array = builder.begin_array().map_err(build)?;
                if r.peek()? == b']' {
                    r.pos += 1;
                    builder.end_array(array).map_err(build)?
                } else {
                    stack.push(Frame::Array(array));
                    continue 'value;
                }
            }
            b'"' => {
                let decoded = r.string()?;
                builder.string(r.decoded(&decoded)).map_err(build)?
            }
            b'-' | b'0'..=b'9' => {
                let (literal, integer) = r.number()?;
                if integer {
                    builder.integer(literal).map_err(build)?
                } else {
                    builder.decimal(literal).map_err(build)?
                }
            }
            b't' => {
                r.literal(b"true")?;
                builder.boolean(true).map_err(build)?
            }
            b'f' => {
                r.literal(b"false")?;
                builder.boolean(false).map_err(build)?
            }
            b'n' => {
                r.literal(b"null")?;
                builder.null().map_err(build)?
            }
            _ => return Err(r.err(ErrorKind::UnexpectedChar).into()),
        };

        // Attach the finished value to its parent, closing every container that ends here.
        loop {
            r.skip_ws();
            match stack.last_mut() {
                None => {
                    if r.pos != input.len() {
                        return Err(r.err(ErrorKind::TrailingData).into());
                    }
                    return Ok(value);
                }
                Some(Frame::Array(array)) => {
                    builder.push(array, value).map_err(build)?;
                    match r.peek()? {
                        b',' => {
                            r.pos += 1;
                            r.skip_ws();
                            continue 'value;
                        }
                        b']' => {
                            r.pos += 1;
                            let Some(Frame::Array(array)) = stack.pop() else {
                                unreachable!("the top frame is an array")
                            };
                            value = builder.end_array(array).map_err(build)?;
                        }
                        _ => return Err(r.err(ErrorKind::UnexpectedChar).into()),
                    }
                }
                Some(Frame::Object(object, pending)) => {
                    let (key, key_start) = pending.take().expect("a key precedes every value");
                    if !builder.insert(object, key, value).map_err(build)? {
                        return Err(JsonError {
                            kind: ErrorKind::DuplicateKey,
                            offset: key_start,
                        }
                        .into());
                    }
                    match r.peek()? {
                        b',' => {
                            r.pos += 1;
                            r.skip_ws();
                            let key_start = r.pos;
                            *pending = Some((r.key(builder)?, key_start));
                            continue 'value;
                        }
                        b'}' => {
                            r.pos += 1;
                            let Some(Frame::Object(object, _)) = stack.pop() else {
                                unreachable!("the top frame is an object")
                            };
                            value = builder.end_object(object).map_err(build)?;
                        }
                        _ => return Err(r.err(ErrorKind::UnexpectedChar).into()),
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plain Rust value tree
// ---------------------------------------------------------------------------------------------

/// A JSON value. Numbers keep their literal text; objects keep their members in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// An integer literal, exact and of any length (`-?(0|[1-9][0-9]*)`).
    Integer(String),
    /// A number with a fraction or an exponent, as its literal text.
    Decimal(String),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, members in document order, keys unique.
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The integer as `i64`, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(literal) => literal.parse().ok(),
            _ => None,
        }
    }

    /// The value of `key`, if this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Objects with more members than this check for duplicates with a hash set.
const LINEAR_DUP_CHECK: usize = 16;

/// An object of the value tree under construction.
pub struct TreeObject {
    members: Vec<(String, Value)>,
    /// Every key, once the object is too large for a linear duplicate check.
    index: Option<HashSet<String>>,
}

/// Builds a [`Value`] tree.
#[derive(Debug, Default)]
pub struct TreeBuilder;

impl Builder for TreeBuilder {
    type Value = Value;
    type Key = String;
    type Object = TreeObject;
    type Array = Vec<Value>;
    type Error = std::convert::Infallible;

    fn null(&mut self) -> Result<Value, Self::Error> {
        Ok(Value::Null)
    }
    fn boolean(&mut self, value: bool) -> Result<Value, Self::Error> {
        Ok(Value::Bool(value))
    }
    fn integer(&mut self, literal: &str) -> Result<Value, Self::Error> {
        Ok(Value::Integer(literal.to_owned()))
    }
    fn decimal(&mut self, literal: &str) -> Result<Value, Self::Error> {
        Ok(Value::Decimal(literal.to_owned()))
    }
    fn string(&mut self, value: &str) -> Result<Value, Self::Error> {
        Ok(Value::String(value.to_owned()))
    }
    fn key(&mut self, key: &str) -> Result<String, Self::Error> {
        Ok(key.to_owned())
    }
    fn begin_object(&mut self) -> Result<TreeObject, Self::Error> {
        Ok(TreeObject {
            members: Vec::new(),
            index: None,
        })
    }
    fn insert(
        &mut self,
        object: &mut TreeObject,
        key: String,
        value: Value,
    ) -> Result<bool, Self::Error> {
        let fresh = match &mut object.index {
            Some(index) => index.insert(key.clone()),
            None if object.members.len() < LINEAR_DUP_CHECK => {
                !object.members.iter().any(|(k, _)| *k == key)
            }
            None => {
                let mut index: HashSet<String> =
                    object.members.iter().map(|(k, _)| k.clone()).collect();
                let fresh = index.insert(key.clone());
                object.index = Some(index);
                fresh
            }
        };
        if fresh {
            object.members.push((key, value));
        }
        Ok(fresh)
    }
    fn end_object(&mut self, object: TreeObject) -> Result<Value, Self::Error> {
        Ok(Value::Object(object.members))
    }
    fn begin_array(&mut self) -> Result<Vec<Value>, Self::Error> {
        Ok(Vec::new())
    }
    fn push(&mut self, array: &mut Vec<Value>, value: Value) -> Result<(), Self::Error> {
        array.push(value);
        Ok(())
    }
    fn end_array(&mut self, array: Vec<Value>) -> Result<Value, Self::Error> {
        Ok(Value::Array(array))
    }
}

/// Parses one strict JSON document into a [`Value`] tree.
pub fn parse(input: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    parse_with(input, max_depth, &mut TreeBuilder).map_err(|e| match e {
        ParseError::Syntax(e) => e,
        ParseError::Build(never) => match never {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Value {
        parse(s.as_bytes(), 32).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn kind(input: &[u8]) -> ErrorKind {
        match parse(input, 32) {
            Ok(v) => panic!("{:?} parsed as {v:?}", String::from_utf8_lossy(input)),
            Err(e) => e.kind,
        }
    }

    fn s(v: &str) -> Value {
        Value::String(v.to_owned())
    }

    fn int(v: &str) -> Value {
        Value::Integer(v.to_owned())
    }

    fn dec(v: &str) -> Value {
        Value::Decimal(v.to_owned())
    }

    #[test]
    fn scalars() {
        assert_eq!(ok("null"), Value::Null);
        assert_eq!(ok(" true "), Value::Bool(true));
        assert_eq!(ok("\t\r\nfalse\n"), Value::Bool(false));
        assert_eq!(ok("0"), int("0"));
        assert_eq!(ok("-0"), int("-0"));
        assert_eq!(ok("-3"), int("-3"));
        assert_eq!(ok("\"x\""), s("x"));
        assert_eq!(ok("\"\""), s(""));
    }

    #[test]
    fn exact_numbers() {
        assert_eq!(ok("123456789012345.1234"), dec("123456789012345.1234"));
        assert_eq!(ok("33.66"), dec("33.66"));
        assert_eq!(ok("1.00000"), dec("1.00000"));
        assert_eq!(ok("-0.0"), dec("-0.0"));
        assert_eq!(ok("1e3"), dec("1e3"));
        assert_eq!(ok("1E+3"), dec("1E+3"));
        assert_eq!(ok("-1.5e-300"), dec("-1.5e-300"));
        assert_eq!(ok("0.1"), dec("0.1"));
        let big = "123456789012345678901234567890123456789012345678901234567890";
        assert_eq!(ok(big), int(big));
        assert_eq!(ok(&format!("-{big}")), int(&format!("-{big}")));
        assert_eq!(ok("9223372036854775807").as_i64(), Some(i64::MAX));
        assert_eq!(ok("-9223372036854775808").as_i64(), Some(i64::MIN));
        assert_eq!(ok("9223372036854775808").as_i64(), None);
        assert_eq!(ok("9223372036854775808"), int("9223372036854775808"));
        assert_eq!(
            ok(r#"{"money":123456789012345.1234}"#).get("money"),
            Some(&dec("123456789012345.1234"))
        );
    }

    #[test]
    fn bad_numbers() {
        for text in [
            "01",
            "-01",
            "00",
            "1.",
            "-",
            "-a",
            ".5",
            "+1",
            "1e",
            "1e+",
            "1.e3",
            "0x1",
            "NaN",
            "Infinity",
            "-Infinity",
            "1.5.5",
            "--1",
            "1_000",
            "1 2",
        ] {
            assert!(parse(text.as_bytes(), 32).is_err(), "{text}");
        }
        assert_eq!(kind(b"1."), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"1.x"), ErrorKind::InvalidNumber);
        assert_eq!(kind(b"[1e]"), ErrorKind::InvalidNumber);
        assert_eq!(kind(b"-x"), ErrorKind::InvalidNumber);
        assert_eq!(kind(b"01"), ErrorKind::TrailingData);
    }

    #[test]
    fn containers_keep_order() {
        let v = ok(r#" { "b" : [1, "2", {"c": null}, []], "a": {}, "z": [true,false] } "#);
        assert_eq!(
            v,
            Value::Object(vec![
                (
                    "b".into(),
                    Value::Array(vec![
                        int("1"),
                        s("2"),
                        Value::Object(vec![("c".into(), Value::Null)]),
                        Value::Array(vec![]),
                    ])
                ),
                ("a".into(), Value::Object(vec![])),
                (
                    "z".into(),
                    Value::Array(vec![Value::Bool(true), Value::Bool(false)])
                ),
            ])
        );
    }

    #[test]
    fn duplicate_keys_rejected_at_any_depth() {
        assert_eq!(kind(br#"{"a":1,"a":2}"#), ErrorKind::DuplicateKey);
        assert_eq!(kind(br#"{"a":1,"b":2,"a":1}"#), ErrorKind::DuplicateKey);
        assert_eq!(kind(br#"{"x":{"a":1,"a":2}}"#), ErrorKind::DuplicateKey);
        assert_eq!(
            kind(br#"[{"a":1},{"b":[{"c":1,"c":1}]}]"#),
            ErrorKind::DuplicateKey
        );
        // Escapes are decoded before comparing.
        assert_eq!(kind(br#"{"a":1,"\u0061":2}"#), ErrorKind::DuplicateKey);
        assert_eq!(kind(br#"{"\/":1,"/":2}"#), ErrorKind::DuplicateKey);
        // The same key in sibling or nested objects is fine.
        ok(r#"{"a":{"a":{"a":1}},"b":{"a":2}}"#);
        ok(r#"[{"a":1},{"a":2}]"#);
        // Keys differing only in case or normalisation are different keys.
        ok(r#"{"a":1,"A":2,"é":3,"e\u0301":4}"#);
        let err = parse(br#"{"a":1,"a":2}"#, 32).unwrap_err();
        assert_eq!(err.offset, 7);
        assert_eq!(err.to_string(), "duplicate key at byte 7");
    }

    #[test]
    fn duplicate_keys_in_large_objects() {
        let mut body = String::from("{");
        for i in 0..1000 {
            body.push_str(&format!("\"k{i}\":{i},"));
        }
        let unique = format!("{}\"last\":0}}", body);
        let Value::Object(members) = ok(&unique) else {
            panic!("object expected")
        };
        assert_eq!(members.len(), 1001);
        assert_eq!(members[999], ("k999".to_owned(), int("999")));
        for dup in ["k0", "k15", "k16", "k17", "k999"] {
            let text = format!("{body}\"{dup}\":0}}");
            assert_eq!(kind(text.as_bytes()), ErrorKind::DuplicateKey, "{dup}");
        }
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            ok(r#""a\"b\\c\/d\be\ff\ng\rh\ti""#),
            s("a\"b\\c/d\u{8}e\u{c}f\ng\rh\ti")
        );
        assert_eq!(ok(r#""\u0041\u00e9\u4E2D""#), s("Aé中"));
        assert_eq!(ok(r#""\u0000""#), s("\0"));
        assert_eq!(ok(r#""\ud83d\ude00""#), s("😀"));
        assert_eq!(ok(r#""x\uD834\uDD1Ey""#), s("x𝄞y"));
        assert_eq!(ok("\"€ raw ✓ 😀\""), s("€ raw ✓ 😀"));
        assert_eq!(ok("\"“curly”\""), s("“curly”"));
        assert_eq!(ok(r#""é\n€""#), s("é\n€"));
        assert_eq!(ok("\"\u{7f}\""), s("\u{7f}"));
    }

    #[test]
    fn bad_strings() {
        assert_eq!(kind(br#""\ud800""#), ErrorKind::LoneSurrogate);
        assert_eq!(kind(br#""\udc00""#), ErrorKind::LoneSurrogate);
        assert_eq!(kind(br#""\ud800x""#), ErrorKind::LoneSurrogate);
        assert_eq!(kind(br#""\ud800\n""#), ErrorKind::LoneSurrogate);
        assert_eq!(kind(br#""\ud800\ud800""#), ErrorKind::LoneSurrogate);
        assert_eq!(kind(br#""\ude00\ud83d""#), ErrorKind::LoneSurrogate);
        assert_eq!(kind(br#""\u12""#), ErrorKind::InvalidEscape);
        assert_eq!(kind(br#""\u12"#), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(br#""\uzzzz""#), ErrorKind::InvalidEscape);
        assert_eq!(kind(br#""\x""#), ErrorKind::InvalidEscape);
        assert_eq!(kind(br#""\'""#), ErrorKind::InvalidEscape);
        assert_eq!(kind(b"\"a\nb\""), ErrorKind::ControlCharacter);
        assert_eq!(kind(b"\"a\tb\""), ErrorKind::ControlCharacter);
        assert_eq!(kind(b"\"\\n\x01\""), ErrorKind::ControlCharacter);
        assert_eq!(kind(b"\"\0\""), ErrorKind::ControlCharacter);
        assert_eq!(kind(b"\"abc"), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"\"abc\\"), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"'a'"), ErrorKind::UnexpectedChar);
    }

    #[test]
    fn invalid_utf8() {
        assert_eq!(kind(b"\"\xff\""), ErrorKind::InvalidUtf8);
        assert_eq!(kind(b"\"\xc3\""), ErrorKind::InvalidUtf8);
        assert_eq!(kind(b"\"\xed\xa0\x80\""), ErrorKind::InvalidUtf8); // encoded surrogate
        assert_eq!(kind(b"\"\xc0\xaf\""), ErrorKind::InvalidUtf8); // overlong
        assert_eq!(kind(b"{\"a\":1} \xff"), ErrorKind::InvalidUtf8);
        let err = parse(b"[\"ok\", \"\xfe\"]", 32).unwrap_err();
        assert_eq!(err.offset, 8);
        // A byte order mark is not JSON whitespace.
        assert_eq!(kind(b"\xef\xbb\xbf{}"), ErrorKind::UnexpectedChar);
    }

    #[test]
    fn structure_errors() {
        assert_eq!(kind(b""), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"   "), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"{"), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"["), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"[1"), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"[1,"), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"{\"a\""), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"{\"a\":"), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"{\"a\":1"), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"[1,]"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"[,1]"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"{\"a\":1,}"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"{,}"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"{a:1}"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"{\"a\" 1}"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"{1:1}"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"[1 2]"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"[1}"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"{\"a\":1]"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"tru"), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"trUe"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"nul"), ErrorKind::UnexpectedEnd);
        assert_eq!(kind(b"True"), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"{}{}"), ErrorKind::TrailingData);
        assert_eq!(kind(b"{} x"), ErrorKind::TrailingData);
        assert_eq!(kind(b"1 2"), ErrorKind::TrailingData);
        assert_eq!(kind(b"nullx"), ErrorKind::TrailingData);
        assert_eq!(kind(b"{}\0"), ErrorKind::TrailingData);
        assert_eq!(kind(b"\x0c{}"), ErrorKind::UnexpectedChar); // form feed is not whitespace
        assert_eq!(kind("\u{a0}{}".as_bytes()), ErrorKind::UnexpectedChar);
        assert_eq!(kind(b"// c\n{}"), ErrorKind::UnexpectedChar);
    }

    #[test]
    fn depth_limit() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(nested(32).as_bytes(), 32).is_ok());
        assert_eq!(
            parse(nested(33).as_bytes(), 32).unwrap_err().kind,
            ErrorKind::TooDeep
        );
        assert_eq!(parse(b"[]", 0).unwrap_err().kind, ErrorKind::TooDeep);
        assert_eq!(parse(b"{}", 0).unwrap_err().kind, ErrorKind::TooDeep);
        assert_eq!(parse(b"1", 0), Ok(int("1")));
        let objects = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert!(parse(objects(5).as_bytes(), 5).is_ok());
        let err = parse(objects(6).as_bytes(), 5).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooDeep);
        assert_eq!(err.offset, 25);
        // Siblings do not add depth.
        assert!(parse(b"[[1],[2],{\"a\":[3]}]", 3).is_ok());
        assert_eq!(
            parse(b"[[1],[2],{\"a\":[3]}]", 2).unwrap_err().kind,
            ErrorKind::TooDeep
        );
        assert_eq!(
            parse(b"1", MAX_DEPTH_LIMIT + 1).unwrap_err().kind,
            ErrorKind::DepthLimitTooLarge
        );
    }

    #[test]
    fn huge_nesting_cannot_overflow_the_stack() {
        // Far deeper than any recursive reader could go: rejected at the limit, iteratively.
        let deep = "[".repeat(5_000_000);
        assert_eq!(
            parse(deep.as_bytes(), MAX_DEPTH_LIMIT).unwrap_err().kind,
            ErrorKind::TooDeep
        );
        let ok_deep = format!(
            "{}{}",
            "[".repeat(MAX_DEPTH_LIMIT),
            "]".repeat(MAX_DEPTH_LIMIT)
        );
        assert!(parse(ok_deep.as_bytes(), MAX_DEPTH_LIMIT).is_ok());
    }

    #[test]
    fn minigame_body_parses() {
        let body = br#"{"app_id":"10013","bet":"3","game_id":74,"money":"-3","order_id":"20240716195311drxaoz1mxx6g","player_login_token":"66de94a2-4368-11ef-a0be-581122c6f6d4","session_id":"1813180074526625845","timestamp":1721130791,"uname":"1006417","end_round":false,"type":1,"cancel_order_id":"","award_order_ids":null}"#;
        let v = parse(body, 32).unwrap();
        assert_eq!(v.get("money"), Some(&s("-3")));
        assert_eq!(v.get("game_id").and_then(Value::as_i64), Some(74));
        assert_eq!(v.get("award_order_ids"), Some(&Value::Null));
        assert_eq!(v.get("end_round"), Some(&Value::Bool(false)));
    }
}
