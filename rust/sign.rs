//! Request signatures (see `shared/spec/signatures.md`).
//!
//! * MINI.GAME / OMG: `lowercase_hex(md5(raw_query + raw_body + key))`.
//! * Midas v1 `sig` / `mp_sig`: HMAC-SHA256 over the sorted `k=v&…` string plus
//!   `&org_loc=<path>&method=POST&secret=<AppKey>` (or `&session_key=<session_key>`).
//!
//! All verification is constant-time (`subtle`). Nothing here allocates except the sort buffer
//! of a Midas request with more than [`INLINE_PARAMS`] parameters.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex of an MD5 digest.
pub type Md5Hex = [u8; 32];
/// Lowercase hex of a SHA-256 digest.
pub type Sha256Hex = [u8; 64];

/// Midas requests with at most this many parameters are sorted on the stack.
pub const INLINE_PARAMS: usize = 32;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Views lowercase hex as text.
pub fn hex_str(hex: &[u8]) -> &str {
    std::str::from_utf8(hex).expect("hex is ASCII")
}

/// ASCII lowercase without data-dependent branches.
#[inline]
fn ascii_lower_ct(b: u8) -> u8 {
    let is_upper = u8::from(b.wrapping_sub(b'A') < 26);
    b | (is_upper << 5)
}

/// Constant-time equality of two byte strings; a length difference returns `false` (lengths are
/// not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

// ---------------------------------------------------------------------------------------------
// MINI.GAME / OMG
// ---------------------------------------------------------------------------------------------

/// `lowercase_hex(md5(raw_query + raw_body + key))`, with no separators.
pub fn minigame_sign(raw_query: &[u8], raw_body: &[u8], key: &[u8]) -> Md5Hex {
    let digest = Md5::new()
        .chain_update(raw_query)
        .chain_update(raw_body)
        .chain_update(key)
        .finalize();
    let mut out = [0u8; 32];
    hex_into(&digest, &mut out);
    out
}

/// Checks a `sign` header in constant time. ASCII case is ignored; `None` (a missing header)
/// fails.
pub fn verify_minigame_sign(
    raw_query: &[u8],
    raw_body: &[u8],
    key: &[u8],
    sign: Option<&[u8]>,
) -> bool {
    let Some(sign) = sign else {
        return false;
    };
    let expected = minigame_sign(raw_query, raw_body, key);
    if sign.len() != expected.len() {
        return false;
    }
    let mut lowered = [0u8; 32];
    for (dst, &src) in lowered.iter_mut().zip(sign) {
        *dst = ascii_lower_ct(src);
    }
    lowered.ct_eq(&expected).into()
}

// ---------------------------------------------------------------------------------------------
// Midas v1
// ---------------------------------------------------------------------------------------------

/// Sorts `params` by name (then value) in byte order and hands the sorted view to `f`, without
/// allocating for up to [`INLINE_PARAMS`] parameters.
fn with_sorted<K, V, R>(params: &[(K, V)], f: impl FnOnce(&[(&[u8], &[u8])]) -> R) -> R
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    fn view<K: AsRef<[u8]>, V: AsRef<[u8]>>((k, v): &(K, V)) -> (&[u8], &[u8]) {
        (k.as_ref(), v.as_ref())
    }
    if params.len() <= INLINE_PARAMS {
        let mut buf: [(&[u8], &[u8]); INLINE_PARAMS] = [(&[], &[]); INLINE_PARAMS];
        let sorted = &mut buf[..params.len()];
        for (slot, param) in sorted.iter_mut().zip(params) {
            *slot = view(param);
        }
        sorted.sort_unstable();
        f(sorted)
    } else {
        let mut sorted: Vec<(&[u8], &[u8])> = params.iter().map(view).collect();
        sorted.sort_unstable();
        f(&sorted)
    }
}

/// Feeds `stringA + "&org_loc=" + org_loc + "&method=POST&" + label + "=" + secret` to a MAC
/// keyed with `secret`, without building the string.
fn midas_mac<K, V>(params: &[(K, V)], org_loc: &[u8], label: &[u8], secret: &[u8]) -> Sha256Hex
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    with_sorted(params, |sorted| {
        for (i, (k, v)) in sorted.iter().enumerate() {
            if i > 0 {
                mac.update(b"&");
            }
            mac.update(k);
            mac.update(b"=");
            mac.update(v);
        }
    });
    mac.update(b"&org_loc=");
    mac.update(org_loc);
    mac.update(b"&method=POST&");
    mac.update(label);
    mac.update(b"=");
    mac.update(secret);
    let tag = mac.finalize().into_bytes();
    let mut out = [0u8; 64];
    hex_into(&tag, &mut out);
    out
}

/// The Midas `sig`. `params` must already exclude `sig`, `mp_sig` and `access_token`.
pub fn midas_sig<K, V>(params: &[(K, V)], org_loc: &str, app_key: &str) -> Sha256Hex
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    midas_mac(params, org_loc.as_bytes(), b"secret", app_key.as_bytes())
}

/// The Midas `mp_sig`. `params` must include `access_token` and `sig`; the session_key is used
/// as text (never base64-decoded).
pub fn midas_mp_sig<K, V>(params: &[(K, V)], org_loc: &str, session_key: &str) -> Sha256Hex
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    midas_mac(
        params,
        org_loc.as_bytes(),
        b"session_key",
        session_key.as_bytes(),
    )
}

/// Checks a Midas `sig` in constant time (lowercase hex expected; `None` fails).
pub fn verify_midas_sig<K, V>(
    params: &[(K, V)],
    org_loc: &str,
    app_key: &str,
    sig: Option<&[u8]>,
) -> bool
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let Some(sig) = sig else {
        return false;
    };
    constant_time_eq(&midas_sig(params, org_loc, app_key), sig)
}

/// Checks a Midas `mp_sig` in constant time (lowercase hex expected; `None` fails).
pub fn verify_midas_mp_sig<K, V>(
    params: &[(K, V)],
    org_loc: &str,
    session_key: &str,
    mp_sig: Option<&[u8]>,
) -> bool
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let Some(mp_sig) = mp_sig else {
        return false;
    };
    constant_time_eq(&midas_mp_sig(params, org_loc, session_key), mp_sig)
}

/// Lowercase hex HMAC-SHA256.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> Sha256Hex {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    let mut out = [0u8; 64];
    hex_into(&mac.finalize().into_bytes(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- MINI.GAME -----------------------------------------------------------------------------

    const MG_QUERY: &str = "trace_id=dhf1aboc1iio";
    const MG_KEY: &str = "39a6581c31ef3203a22edb2daa2ab6d1";
    const MG_BODY: &str = r#"{"player_logon_token":"b27cfe9b-f01c-11ee-a0b5-000c2901d9cc","account_id":"1002402","timestamp":1711971655}"#;
    const MG_SIGN: &str = "e3f8dc79e875e46f6755ef540c2d24f3";

    const MG_CHANGE_BODY: &str = r#"{"app_id":"10013","bet":"3","game_id":74,"money":"-3","order_id":"20240716195311drxaoz1mxx6g","player_login_token":"66de94a2-4368-11ef-a0be-581122c6f6d4","session_id":"1813180074526625845","timestamp":1721130791,"uname":"1006417","end_round":false,"type":1,"cancel_order_id":"","award_order_ids":null}"#;
    const MG_CHANGE_SIGN: &str = "1d616dbce80f9c95e17a7a544f5bd71f";
    /// The same object as `json.dumps` writes it by default (`", "` and `": "`).
    const MG_CHANGE_BODY_SPACED: &str = r#"{"app_id": "10013", "bet": "3", "game_id": 74, "money": "-3", "order_id": "20240716195311drxaoz1mxx6g", "player_login_token": "66de94a2-4368-11ef-a0be-581122c6f6d4", "session_id": "1813180074526625845", "timestamp": 1721130791, "uname": "1006417", "end_round": false, "type": 1, "cancel_order_id": "", "award_order_ids": null}"#;
    const MG_CHANGE_SIGN_SPACED: &str = "851203cb2a7e43a5176782bcba4e0125";
    const MG_CURLY_SIGN: &str = "d66a60d2a6565c3f933386c41b3dfba0";

    fn mg(body: &str) -> String {
        hex_str(&minigame_sign(
            MG_QUERY.as_bytes(),
            body.as_bytes(),
            MG_KEY.as_bytes(),
        ))
        .to_owned()
    }

    fn mg_verify(body: &str, sign: Option<&str>) -> bool {
        verify_minigame_sign(
            MG_QUERY.as_bytes(),
            body.as_bytes(),
            MG_KEY.as_bytes(),
            sign.map(str::as_bytes),
        )
    }

    #[test]
    fn minigame_official_vector() {
        assert_eq!(mg(MG_BODY), MG_SIGN);
        // The spec's "string hashed" row: one concatenation, no separators.
        let hashed = format!("{MG_QUERY}{MG_BODY}{MG_KEY}");
        assert_eq!(
            hex_str(&minigame_sign(hashed.as_bytes(), b"", b"")),
            MG_SIGN
        );
        assert!(mg_verify(MG_BODY, Some(MG_SIGN)));
        assert!(mg_verify(MG_BODY, Some(&MG_SIGN.to_ascii_uppercase())));
        assert!(mg_verify(MG_BODY, Some("E3f8DC79e875e46f6755ef540c2d24F3")));
    }

    #[test]
    fn minigame_rejections() {
        assert!(!mg_verify(MG_BODY, None));
        assert!(!mg_verify(MG_BODY, Some("")));
        assert!(!mg_verify(MG_BODY, Some(&MG_SIGN[..31])));
        assert!(!mg_verify(MG_BODY, Some(&format!("{MG_SIGN}0"))));
        assert!(!mg_verify(MG_BODY, Some(&format!(" {}", &MG_SIGN[1..]))));
        assert!(!mg_verify(
            MG_BODY,
            Some("e3f8dc79e875e46f6755ef540c2d24f4")
        ));
        // Wrong key, reordered query, or a query with a separator.
        assert!(!verify_minigame_sign(
            MG_QUERY.as_bytes(),
            MG_BODY.as_bytes(),
            b"39a6581c31ef3203a22edb2daa2ab6d2",
            Some(MG_SIGN.as_bytes())
        ));
        assert!(!verify_minigame_sign(
            b"",
            format!("{MG_QUERY}&{MG_BODY}").as_bytes(),
            MG_KEY.as_bytes(),
            Some(MG_SIGN.as_bytes())
        ));
        // Case folding must not map other bytes onto hex digits.
        let mut shifted = MG_SIGN.as_bytes().to_vec();
        shifted[0] = b'e' ^ 0x20; // 'E' is fine …
        assert!(mg_verify(
            MG_BODY,
            Some(std::str::from_utf8(&shifted).unwrap())
        ));
        shifted[1] = b'3' ^ 0x20; // … but '3' ^ 0x20 = 0x13 is not '3'.
        assert!(!verify_minigame_sign(
            MG_QUERY.as_bytes(),
            MG_BODY.as_bytes(),
            MG_KEY.as_bytes(),
            Some(&shifted)
        ));
    }

    #[test]
    fn minigame_derived_change_balance() {
        assert_eq!(mg(MG_CHANGE_BODY), MG_CHANGE_SIGN);
        assert!(mg_verify(MG_CHANGE_BODY, Some(MG_CHANGE_SIGN)));
    }

    #[test]
    fn minigame_derived_reserialised_body_fails() {
        assert_eq!(mg(MG_CHANGE_BODY_SPACED), MG_CHANGE_SIGN_SPACED);
        assert_ne!(MG_CHANGE_SIGN_SPACED, MG_CHANGE_SIGN);
        // A sign made over re-serialised bytes must not verify the compact bytes received.
        assert!(!mg_verify(MG_CHANGE_BODY, Some(MG_CHANGE_SIGN_SPACED)));
        assert!(mg_verify(
            MG_CHANGE_BODY_SPACED,
            Some(MG_CHANGE_SIGN_SPACED)
        ));
    }

    #[test]
    fn minigame_derived_curly_quotes() {
        let curly = MG_BODY.replace('"', "\u{201C}");
        assert_eq!(mg(&curly), MG_CURLY_SIGN);
        assert!(!mg_verify(MG_BODY, Some(MG_CURLY_SIGN)));
        assert!(!mg_verify(&curly, Some(MG_SIGN)));
    }

    // --- Midas -----------------------------------------------------------------------------------

    const APP_KEY: &str = "zNLgAGgqsEWJOg1nFVaO5r7fAlIQxr1u";
    const PATH: &str = "/cgi-bin/midas/getbalance";
    const SANDBOX_PATH: &str = "/cgi-bin/midas/sandbox/getbalance";
    const PAY_PATH: &str = "/cgi-bin/midas/pay";
    const ACCESS_TOKEN: &str = "ACCESSTOKEN";
    const SESSION_KEY: &str = "V7Q38/i2KXaqrQyl2Yx9Hg==";
    const SIG: &str = "1ad64e8dcb2ec1dc486b7fdf01f4a15159fc623dc3422470e51cf6870734726b";
    const MP_SIG: &str = "ff4c5bb39dea1002a8f03be0438724e1a8bcea5ebce8f221f9b9fea3bcf3bf76";
    const SANDBOX_SIG: &str = "f8f9f6ac64eb1cf4a5f2f0235f72fe69af0d2ceb2b26bed5a024244140643bb4";
    const SANDBOX_MP_SIG: &str = "ba1b7d2bce2e824cadf56c143fab6739e843f7b5578c079ec1432f12e5120b6c";
    const PAY_SIG: &str = "14706e70591862f7d6123db4ca13dc407790034db5ca2f48656349943fb66b99";
    const PAY_MP_SIG: &str = "c53c5b4f57e94dee76989622eb6590dea9ab161ff0d84bf5cb89c51f1e6cae25";
    const PLACEHOLDER_SIG: &str =
        "d1f0a41272f9b85618361323e1b19cd8cb0213f21b935aeaa39c160892031e97";
    const PLACEHOLDER_MP_SIG: &str =
        "1314420754fee7a7a149790d10fd0b2dc9b2fdc54eed0d1ee2d282ad5bb01e44";
    const WRONG_MP_SIG_NO_TOKEN: &str =
        "0d76d830ebd02e962238de44788ff419d2af047ae9ca8479567506aec82e96ad";
    const WRONG_MP_SIG_DECODED_KEY: &str =
        "5234e586f55f41810281cb8144066328d6505e090b8c5e37689e59acb36063db";

    /// The official params, in the order the tutorial lists them (unsorted).
    fn base_params() -> Vec<(String, String)> {
        [
            ("openid", "odkx20ENSNa2w5y3g_qOkOvBNM1g"),
            ("appid", "wx1234567"),
            ("offer_id", "12345678"),
            ("ts", "1507530737"),
            ("zone_id", "1"),
            ("pf", "android"),
        ]
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn with(mut params: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        params.extend(extra.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())));
        params
    }

    fn hex(h: &[u8]) -> String {
        hex_str(h).to_owned()
    }

    #[test]
    fn midas_official_sig() {
        let params = base_params();
        assert_eq!(hex(&midas_sig(&params, PATH, APP_KEY)), SIG);
        // The same as HMAC over the spelled-out string of the spec.
        let string = "appid=wx1234567&offer_id=12345678&openid=odkx20ENSNa2w5y3g_qOkOvBNM1g\
                      &pf=android&ts=1507530737&zone_id=1&org_loc=/cgi-bin/midas/getbalance\
                      &method=POST&secret=zNLgAGgqsEWJOg1nFVaO5r7fAlIQxr1u";
        assert_eq!(
            hex(&hmac_sha256_hex(APP_KEY.as_bytes(), string.as_bytes())),
            SIG
        );
        assert!(verify_midas_sig(
            &params,
            PATH,
            APP_KEY,
            Some(SIG.as_bytes())
        ));
        assert!(!verify_midas_sig(&params, PATH, APP_KEY, None));
        assert!(!verify_midas_sig(&params, PATH, APP_KEY, Some(b"")));
        assert!(!verify_midas_sig(
            &params,
            SANDBOX_PATH,
            APP_KEY,
            Some(SIG.as_bytes())
        ));
        assert!(!verify_midas_sig(&params, PATH, "x", Some(SIG.as_bytes())));
    }

    #[test]
    fn midas_official_mp_sig() {
        let params = with(
            base_params(),
            &[("access_token", ACCESS_TOKEN), ("sig", SIG)],
        );
        assert_eq!(hex(&midas_mp_sig(&params, PATH, SESSION_KEY)), MP_SIG);
        let string = "access_token=ACCESSTOKEN&appid=wx1234567&offer_id=12345678\
                      &openid=odkx20ENSNa2w5y3g_qOkOvBNM1g&pf=android\
                      &sig=1ad64e8dcb2ec1dc486b7fdf01f4a15159fc623dc3422470e51cf6870734726b\
                      &ts=1507530737&zone_id=1&org_loc=/cgi-bin/midas/getbalance\
                      &method=POST&session_key=V7Q38/i2KXaqrQyl2Yx9Hg==";
        assert_eq!(
            hex(&hmac_sha256_hex(SESSION_KEY.as_bytes(), string.as_bytes())),
            MP_SIG
        );
        assert!(verify_midas_mp_sig(
            &params,
            PATH,
            SESSION_KEY,
            Some(MP_SIG.as_bytes())
        ));
        assert!(!verify_midas_mp_sig(&params, PATH, SESSION_KEY, None));
        assert!(!verify_midas_mp_sig(
            &params,
            PATH,
            APP_KEY,
            Some(MP_SIG.as_bytes())
        ));
        // Uppercase hex is not the documented form.
        let upper = MP_SIG.to_ascii_uppercase();
        assert!(!verify_midas_mp_sig(
            &params,
            PATH,
            SESSION_KEY,
            Some(upper.as_bytes())
        ));
    }

    #[test]
    fn midas_sandbox() {
        let params = base_params();
        assert_eq!(hex(&midas_sig(&params, SANDBOX_PATH, APP_KEY)), SANDBOX_SIG);
        let params = with(
            params,
            &[("access_token", ACCESS_TOKEN), ("sig", SANDBOX_SIG)],
        );
        assert_eq!(
            hex(&midas_mp_sig(&params, SANDBOX_PATH, SESSION_KEY)),
            SANDBOX_MP_SIG
        );
    }

    #[test]
    fn midas_pay() {
        let params = with(base_params(), &[("amt", "10"), ("bill_no", "BILL0001")]);
        assert_eq!(hex(&midas_sig(&params, PAY_PATH, APP_KEY)), PAY_SIG);
        let params = with(params, &[("access_token", ACCESS_TOKEN), ("sig", PAY_SIG)]);
        assert_eq!(
            hex(&midas_mp_sig(&params, PAY_PATH, SESSION_KEY)),
            PAY_MP_SIG
        );
        assert!(verify_midas_mp_sig(
            &params,
            PAY_PATH,
            SESSION_KEY,
            Some(PAY_MP_SIG.as_bytes())
        ));
    }

    #[test]
    fn midas_placeholder_sig() {
        let params = with(
            base_params(),
            &[("access_token", ACCESS_TOKEN), ("sig", PLACEHOLDER_SIG)],
        );
        assert_eq!(
            hex(&midas_mp_sig(&params, PATH, SESSION_KEY)),
            PLACEHOLDER_MP_SIG
        );
    }

    #[test]
    fn midas_wrong_recipes_give_the_documented_wrong_values() {
        // Wrong: mp_sig without access_token.
        let no_token = with(base_params(), &[("sig", SIG)]);
        let wrong = hex(&midas_mp_sig(&no_token, PATH, SESSION_KEY));
        assert_eq!(wrong, WRONG_MP_SIG_NO_TOKEN);
        assert_ne!(wrong, MP_SIG);

        // Wrong: the session_key base64-decoded and used as the HMAC key (the message still
        // carries the text).
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(SESSION_KEY)
            .unwrap();
        let params = with(
            base_params(),
            &[("access_token", ACCESS_TOKEN), ("sig", SIG)],
        );
        let string = "access_token=ACCESSTOKEN&appid=wx1234567&offer_id=12345678\
                      &openid=odkx20ENSNa2w5y3g_qOkOvBNM1g&pf=android\
                      &sig=1ad64e8dcb2ec1dc486b7fdf01f4a15159fc623dc3422470e51cf6870734726b\
                      &ts=1507530737&zone_id=1&org_loc=/cgi-bin/midas/getbalance\
                      &method=POST&session_key=V7Q38/i2KXaqrQyl2Yx9Hg==";
        let wrong = hex(&hmac_sha256_hex(&decoded, string.as_bytes()));
        assert_eq!(wrong, WRONG_MP_SIG_DECODED_KEY);
        assert_ne!(wrong, MP_SIG);
        let right = midas_mp_sig(&params, PATH, SESSION_KEY);
        assert!(!verify_midas_mp_sig(
            &params,
            PATH,
            SESSION_KEY,
            Some(WRONG_MP_SIG_DECODED_KEY.as_bytes())
        ));
        assert!(!verify_midas_mp_sig(
            &params,
            PATH,
            SESSION_KEY,
            Some(WRONG_MP_SIG_NO_TOKEN.as_bytes())
        ));
        assert_eq!(hex(&right), MP_SIG);
    }

    #[test]
    fn midas_order_of_input_does_not_matter() {
        let mut params = base_params();
        params.reverse();
        assert_eq!(hex(&midas_sig(&params, PATH, APP_KEY)), SIG);
        params.sort();
        assert_eq!(hex(&midas_sig(&params, PATH, APP_KEY)), SIG);
        let strs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(hex(&midas_sig(&strs, PATH, APP_KEY)), SIG);
    }

    #[test]
    fn midas_inline_and_heap_sort_paths_agree_with_the_recipe() {
        for n in [0, 1, INLINE_PARAMS, INLINE_PARAMS + 1, INLINE_PARAMS + 40] {
            let params: Vec<(String, String)> = (0..n)
                .rev()
                .map(|i| (format!("k{i:03}"), format!("v{i}")))
                .collect();
            let string_a: Vec<String> = (0..n).map(|i| format!("k{i:03}=v{i}")).collect();
            let string = format!("{}&org_loc=/p&method=POST&secret=key", string_a.join("&"));
            assert_eq!(
                midas_sig(&params, "/p", "key"),
                hmac_sha256_hex(b"key", string.as_bytes()),
                "{n}"
            );
        }
    }

    // --- WeChat login state --------------------------------------------------------------------

    #[test]
    fn login_state_vector() {
        let signature = hmac_sha256_hex(b"o0q0otL8aEzpcZL/FT9WsQ==", br#"{"foo":"bar"}"#);
        assert_eq!(
            hex_str(&signature),
            "654571f79995b2ce1e149e53c0a33dc39c0a74090db514261454e8dbe432aa0b"
        );
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b"ABC"));
    }

    #[test]
    fn ascii_lower_is_exact() {
        for b in 0..=255u8 {
            assert_eq!(ascii_lower_ct(b), b.to_ascii_lowercase(), "{b}");
        }
    }
}
