//! walletgate's native core.
//!
//! The plain Rust modules [`money`], [`sign`], [`json`] and [`journal`] hold all the logic and
//! their own tests.
//! The `py` module (feature `python`, on by default and always on in maturin builds) is the only
//! place that touches PyO3: thin wrappers that map errors to `ValueError` / `OverflowError`.

pub mod journal;
pub mod json;
pub mod money;
pub mod sign;

#[cfg(feature = "python")]
mod py {
    use std::ffi::CString;

    use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::pybacked::PyBackedStr;
    use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};

    use crate::journal;
    use crate::json::{self, Builder, ParseError};
    use crate::money::{self, MoneyError};
    use crate::sign;

    // -----------------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------------

    fn money_error(e: MoneyError) -> PyErr {
        PyValueError::new_err(format!("invalid amount: {e}"))
    }

    fn overflow(what: &str) -> PyErr {
        PyOverflowError::new_err(format!("{what} is outside the int64 unit range"))
    }

    /// ASCII hex digest as a Python `str`.
    fn hex_str<'py>(py: Python<'py>, hex: &[u8]) -> Bound<'py, PyString> {
        PyString::new(py, sign::hex_str(hex))
    }

    /// The bytes of a `bytes` or `str` secret. `None` for a `str` that cannot be encoded as
    /// UTF-8 (lone surrogates): such a value matches nothing.
    fn secret_bytes<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<Option<&'a [u8]>> {
        if let Ok(b) = obj.downcast::<PyBytes>() {
            Ok(Some(b.as_bytes()))
        } else if let Ok(s) = obj.downcast::<PyString>() {
            Ok(s.to_str().ok().map(str::as_bytes))
        } else {
            Err(PyTypeError::new_err(format!(
                "expected bytes or str, not {}",
                obj.get_type().name()?
            )))
        }
    }

    /// A signature argument: `None` (missing header) or `bytes`/`str`.
    fn optional_secret<'a>(obj: Option<&'a Bound<'_, PyAny>>) -> PyResult<Option<&'a [u8]>> {
        match obj {
            None => Ok(None),
            Some(obj) if obj.is_none() => Ok(None),
            Some(obj) => secret_bytes(obj),
        }
    }

    type Params = Vec<(PyBackedStr, PyBackedStr)>;

    /// Inputs at least this large are hashed with the GIL released.
    const RELEASE_GIL_BYTES: usize = 64 * 1024;

    /// Runs `f` without the GIL when `len` is large enough to be worth the switch. `f` only reads
    /// borrowed `bytes` contents, which are immutable and kept alive by the caller.
    fn maybe_without_gil<T: Send>(py: Python<'_>, len: usize, f: impl FnOnce() -> T + Send) -> T {
        if len >= RELEASE_GIL_BYTES {
            py.allow_threads(f)
        } else {
            f()
        }
    }

    // -----------------------------------------------------------------------------------------
    // JSON
    // -----------------------------------------------------------------------------------------

    /// A JSON number with a fraction or an exponent, kept as its exact literal text.
    #[pyclass(frozen, module = "walletgate._native")]
    pub struct JsonDecimal {
        literal: String,
    }

    #[pymethods]
    impl JsonDecimal {
        /// The number exactly as it appeared in the body, for example ``"33.66"``.
        #[getter]
        fn literal(&self) -> &str {
            &self.literal
        }

        fn __repr__(&self) -> String {
            format!("JsonDecimal('{}')", self.literal)
        }
    }

    /// Builds Python objects directly while the strict reader walks the input.
    struct PyBuilder<'py> {
        py: Python<'py>,
    }

    /// Parses an integer literal of at most 18 digits (always fits in `i64`).
    #[inline]
    fn small_int(literal: &str) -> i64 {
        let (negative, digits) = match literal.as_bytes() {
            [b'-', rest @ ..] => (true, rest),
            all => (false, all),
        };
        let magnitude = digits
            .iter()
            .fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0'));
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }

    impl<'py> Builder for PyBuilder<'py> {
        type Value = Bound<'py, PyAny>;
        type Key = Bound<'py, PyString>;
        type Object = Bound<'py, PyDict>;
        type Array = Bound<'py, PyList>;
        type Error = PyErr;

        fn null(&mut self) -> PyResult<Self::Value> {
            Ok(self.py.None().into_bound(self.py))
        }

        fn boolean(&mut self, value: bool) -> PyResult<Self::Value> {
            Ok(PyBool::new(self.py, value).to_owned().into_any())
        }

        fn integer(&mut self, literal: &str) -> PyResult<Self::Value> {
            // The spec's integer grammar is `0|[1-9][0-9]*` with an optional sign only on
            // decimals: `-0` is a decimal zero, and an integer-only field must refuse it, which
            // it could not once it were the int 0.
            if literal == "-0" {
                return self.decimal(literal);
            }
            // `-?` plus 18 digits always fits in i64.
            if literal.len() <= 18 || (literal.len() == 19 && literal.starts_with('-')) {
                return Ok(small_int(literal).into_pyobject(self.py)?.into_any());
            }
            if let Ok(v) = literal.parse::<i64>() {
                return Ok(v.into_pyobject(self.py)?.into_any());
            }
            // Arbitrary length: CPython parses the decimal text (its int_max_str_digits limit
            // raises ValueError for absurdly long literals).
            let text = CString::new(literal).expect("a number literal has no NUL");
            // SAFETY: `text` is NUL-terminated and outlives the call; the result is a new
            // reference or NULL with an exception set.
            unsafe {
                let ptr = pyo3::ffi::PyLong_FromString(text.as_ptr(), std::ptr::null_mut(), 10);
                Bound::from_owned_ptr_or_err(self.py, ptr)
            }
        }

        fn decimal(&mut self, literal: &str) -> PyResult<Self::Value> {
            Ok(Bound::new(
                self.py,
                JsonDecimal {
                    literal: literal.to_owned(),
                },
            )?
            .into_any())
        }

        fn string(&mut self, value: &str) -> PyResult<Self::Value> {
            Ok(PyString::new(self.py, value).into_any())
        }

        fn key(&mut self, key: &str) -> PyResult<Self::Key> {
            Ok(PyString::new(self.py, key))
        }

        fn begin_object(&mut self) -> PyResult<Self::Object> {
            Ok(PyDict::new(self.py))
        }

        fn insert(
            &mut self,
            object: &mut Self::Object,
            key: Self::Key,
            value: Self::Value,
        ) -> PyResult<bool> {
            // A dict that does not grow already had the key: Python's str equality is exactly
            // the equality of the decoded key text.
            let before = object.len();
            object.set_item(key, value)?;
            Ok(object.len() != before)
        }

        fn end_object(&mut self, object: Self::Object) -> PyResult<Self::Value> {
            Ok(object.into_any())
        }

        fn begin_array(&mut self) -> PyResult<Self::Array> {
            Ok(PyList::empty(self.py))
        }

        fn push(&mut self, array: &mut Self::Array, value: Self::Value) -> PyResult<()> {
            array.append(value)
        }

        fn end_array(&mut self, array: Self::Array) -> PyResult<Self::Value> {
            Ok(array.into_any())
        }
    }

    #[pyfunction]
    #[pyo3(signature = (body, max_depth = 32))]
    fn parse_json<'py>(
        py: Python<'py>,
        body: &[u8],
        max_depth: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let max_depth = usize::try_from(max_depth)
            .ok()
            .filter(|&d| d <= json::MAX_DEPTH_LIMIT)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "max_depth must be between 0 and {}",
                    json::MAX_DEPTH_LIMIT
                ))
            })?;
        json::parse_with(body, max_depth, &mut PyBuilder { py }).map_err(|e| match e {
            ParseError::Syntax(e) => PyValueError::new_err(format!("invalid JSON: {e}")),
            ParseError::Build(e) => e,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Money
    // -----------------------------------------------------------------------------------------

    #[pyfunction]
    fn parse_money(value: &Bound<'_, PyAny>) -> PyResult<i64> {
        if let Ok(s) = value.downcast::<PyString>() {
            let text = s.to_str().map_err(|_| money_error(MoneyError::Syntax))?;
            return money::parse_units(text.as_bytes()).map_err(money_error);
        }
        if value.is_instance_of::<PyBool>() {
            return Err(PyValueError::new_err(
                "invalid amount: bool is not a number",
            ));
        }
        if let Ok(i) = value.downcast::<PyInt>() {
            let major: i64 = i
                .extract()
                .map_err(|_| money_error(MoneyError::OutOfRange))?;
            return money::units_from_integer(major).map_err(money_error);
        }
        if let Ok(d) = value.downcast::<JsonDecimal>() {
            return money::parse_units(d.get().literal.as_bytes()).map_err(money_error);
        }
        Err(PyValueError::new_err(format!(
            "invalid amount: unsupported type {}",
            value.get_type().name()?
        )))
    }

    #[pyfunction]
    fn format_units(py: Python<'_>, units: i64) -> Bound<'_, PyString> {
        let mut buf = [0u8; money::FORMAT_BUF_LEN];
        PyString::new(py, money::format_units_into(units, &mut buf))
    }

    #[pyfunction]
    fn units_to_cents(units: i64) -> i64 {
        money::units_to_cents(units)
    }

    #[pyfunction]
    fn cents_to_units(cents: i64) -> PyResult<i64> {
        money::cents_to_units(cents).ok_or_else(|| overflow("cents"))
    }

    #[pyfunction]
    fn units_to_coins(units: i64) -> i64 {
        money::units_to_coins(units)
    }

    #[pyfunction]
    fn coins_to_units(coins: i64) -> PyResult<i64> {
        money::coins_to_units(coins).ok_or_else(|| overflow("coins"))
    }

    #[pyfunction]
    fn checked_add_units(a: i64, b: i64) -> PyResult<i64> {
        money::checked_add_units(a, b).ok_or_else(|| overflow("the sum"))
    }

    // -----------------------------------------------------------------------------------------
    // Signatures
    // -----------------------------------------------------------------------------------------

    #[pyfunction]
    fn minigame_sign<'py>(
        py: Python<'py>,
        raw_query: &[u8],
        raw_body: &[u8],
        key: &[u8],
    ) -> Bound<'py, PyString> {
        let len = raw_query.len() + raw_body.len() + key.len();
        let hex = maybe_without_gil(py, len, || sign::minigame_sign(raw_query, raw_body, key));
        hex_str(py, &hex)
    }

    #[pyfunction]
    #[pyo3(signature = (raw_query, raw_body, key, sign))]
    fn verify_minigame_sign(
        raw_query: &[u8],
        raw_body: &[u8],
        key: &[u8],
        sign: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let Some(sign) = optional_secret(sign)? else {
            return Ok(false);
        };
        Ok(sign::verify_minigame_sign(
            raw_query,
            raw_body,
            key,
            Some(sign),
        ))
    }

    #[pyfunction]
    fn midas_sig<'py>(
        py: Python<'py>,
        params: Params,
        org_loc: &str,
        app_key: &str,
    ) -> Bound<'py, PyString> {
        hex_str(py, &sign::midas_sig(&params, org_loc, app_key))
    }

    #[pyfunction]
    fn midas_mp_sig<'py>(
        py: Python<'py>,
        params: Params,
        org_loc: &str,
        session_key: &str,
    ) -> Bound<'py, PyString> {
        hex_str(py, &sign::midas_mp_sig(&params, org_loc, session_key))
    }

    #[pyfunction]
    #[pyo3(signature = (params, org_loc, app_key, sig))]
    fn verify_midas_sig(
        params: Params,
        org_loc: &str,
        app_key: &str,
        sig: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let Some(sig) = optional_secret(sig)? else {
            return Ok(false);
        };
        Ok(sign::verify_midas_sig(&params, org_loc, app_key, Some(sig)))
    }

    #[pyfunction]
    #[pyo3(signature = (params, org_loc, session_key, mp_sig))]
    fn verify_midas_mp_sig(
        params: Params,
        org_loc: &str,
        session_key: &str,
        mp_sig: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let Some(mp_sig) = optional_secret(mp_sig)? else {
            return Ok(false);
        };
        Ok(sign::verify_midas_mp_sig(
            &params,
            org_loc,
            session_key,
            Some(mp_sig),
        ))
    }

    #[pyfunction]
    fn hmac_sha256_hex<'py>(py: Python<'py>, key: &[u8], message: &[u8]) -> Bound<'py, PyString> {
        let hex = maybe_without_gil(py, key.len() + message.len(), || {
            sign::hmac_sha256_hex(key, message)
        });
        hex_str(py, &hex)
    }

    #[pyfunction]
    fn constant_time_eq(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
        match (secret_bytes(a)?, secret_bytes(b)?) {
            (Some(a), Some(b)) => Ok(sign::constant_time_eq(a, b)),
            _ => Ok(false),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Journal
    // -----------------------------------------------------------------------------------------

    /// Entries encoded between two chances for other threads to take the GIL.
    const JOURNAL_ENTRIES_PER_GIL_SLICE: usize = 256;

    /// An exact `int` within `i64` (a `bool` is refused: orjson writes it as `true`).
    fn exact_i64(obj: &Bound<'_, PyAny>) -> Option<i64> {
        obj.downcast_exact::<PyInt>().ok()?.extract().ok()
    }

    /// Encodes one `StreamEntry` natively: `Ok(None)` when the entry is not a flat list of
    /// `bytes` fields with a `str` sid and an `int` bucket, or when [`journal::encode_record`]
    /// leaves it to the reference path.
    fn encode_journal_entry<'py>(
        entry: &Bound<'py, PyAny>,
        batch: Option<i64>,
        keymap_ttl_s: i64,
        meta_type: &Bound<'py, PyAny>,
        out: &mut Vec<u8>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = entry.py();
        let fields = entry.getattr(pyo3::intern!(py, "fields"))?;
        let Ok(fields) = fields.downcast::<PyList>() else {
            return Ok(None);
        };
        let items: Vec<Bound<'py, PyAny>> = fields.iter().collect();
        let mut flat: Vec<&[u8]> = Vec::with_capacity(items.len());
        for item in &items {
            let Ok(bytes) = item.downcast::<PyBytes>() else {
                return Ok(None);
            };
            flat.push(bytes.as_bytes());
        }
        let sid = entry.getattr(pyo3::intern!(py, "sid"))?;
        let Some(sid_text) = sid
            .downcast::<PyString>()
            .ok()
            .and_then(|s| s.to_str().ok())
        else {
            return Ok(None);
        };
        let Some(bucket) = exact_i64(&entry.getattr(pyo3::intern!(py, "bucket"))?) else {
            return Ok(None);
        };
        let Some(info) = journal::encode_record(&flat, sid_text, bucket, batch, keymap_ttl_s, out)
        else {
            return Ok(None);
        };
        let other_keys = PyTuple::new(py, &info.other_keys)?;
        let meta = meta_type.call1((
            entry.getattr(pyo3::intern!(py, "stream"))?,
            &sid,
            info.tenant,
            info.player,
            info.currency,
            info.seq,
            info.key,
            info.protocol,
            info.keymap_expire_at_s,
            false,
            other_keys,
        ))?;
        Ok(Some(meta))
    }

    #[pyfunction]
    #[pyo3(signature = (entries, batch, keymap_ttl_s, meta_type, fallback))]
    fn encode_journal_batch<'py>(
        py: Python<'py>,
        entries: &Bound<'py, PyAny>,
        batch: &Bound<'py, PyAny>,
        keymap_ttl_s: &Bound<'py, PyAny>,
        meta_type: &Bound<'py, PyAny>,
        fallback: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyList>)> {
        let batch_number = if batch.is_none() {
            Some(None)
        } else {
            exact_i64(batch).map(Some)
        };
        let native = batch_number.zip(exact_i64(keymap_ttl_s));
        let mut out: Vec<u8> = Vec::with_capacity(entries.len().unwrap_or(0) * 1024);
        let metas = PyList::empty(py);
        for (index, entry) in entries.try_iter()?.enumerate() {
            let entry = entry?;
            if index > 0 && index % JOURNAL_ENTRIES_PER_GIL_SLICE == 0 {
                py.allow_threads(|| ());
            }
            let meta = match native {
                Some((batch, ttl)) => {
                    encode_journal_entry(&entry, batch, ttl, meta_type, &mut out)?
                }
                None => None,
            };
            let meta = match meta {
                Some(meta) => meta,
                None => {
                    let (line, meta): (Bound<'py, PyBytes>, Bound<'py, PyAny>) =
                        fallback.call1((&entry,))?.extract()?;
                    out.extend_from_slice(line.as_bytes());
                    meta
                }
            };
            out.push(b'\n');
            metas.append(meta)?;
        }
        Ok((PyBytes::new(py, &out), metas))
    }

    // -----------------------------------------------------------------------------------------
    // Module
    // -----------------------------------------------------------------------------------------

    #[pymodule]
    fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("MAX_UNITS", money::MAX_UNITS)?;
        m.add("MIN_UNITS", money::MIN_UNITS)?;
        m.add("UNITS_PER_MAJOR", money::UNITS_PER_MAJOR)?;
        m.add_class::<JsonDecimal>()?;
        m.add_function(wrap_pyfunction!(parse_json, m)?)?;
        m.add_function(wrap_pyfunction!(parse_money, m)?)?;
        m.add_function(wrap_pyfunction!(format_units, m)?)?;
        m.add_function(wrap_pyfunction!(units_to_cents, m)?)?;
        m.add_function(wrap_pyfunction!(cents_to_units, m)?)?;
        m.add_function(wrap_pyfunction!(units_to_coins, m)?)?;
        m.add_function(wrap_pyfunction!(coins_to_units, m)?)?;
        m.add_function(wrap_pyfunction!(checked_add_units, m)?)?;
        m.add_function(wrap_pyfunction!(minigame_sign, m)?)?;
        m.add_function(wrap_pyfunction!(verify_minigame_sign, m)?)?;
        m.add_function(wrap_pyfunction!(midas_sig, m)?)?;
        m.add_function(wrap_pyfunction!(midas_mp_sig, m)?)?;
        m.add_function(wrap_pyfunction!(verify_midas_sig, m)?)?;
        m.add_function(wrap_pyfunction!(verify_midas_mp_sig, m)?)?;
        m.add_function(wrap_pyfunction!(hmac_sha256_hex, m)?)?;
        m.add_function(wrap_pyfunction!(constant_time_eq, m)?)?;
        m.add_function(wrap_pyfunction!(encode_journal_batch, m)?)?;
        Ok(())
    }
}
