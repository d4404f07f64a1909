//! `pgwi-token-check`: the test PostgreSQL's token checker, compiled, so that a token role's login costs what a
//! scram login costs rather than the start of a Perl interpreter.
//!
//! Run by `pam_exec expose_authtok` as the server's OS user, with one argument: a configuration file written
//! by pgwi-testsupport for the run (`key=<hex>`, `audience=<aud>`, `log=<path>`; readable by the server's user
//! only, as it holds the run's HMAC key). The token arrives on stdin (ended by a NUL), the role in `PAM_USER`.
//! Exit 0 accepts, 1 refuses, 2 is a broken configuration. One line per check is appended to the log (time,
//! role, `exp`, verdict, reason; never the token), which `pgwi_testsupport::TokenCheck` parses.
//!
//! The rules are the Perl checker's (`testsupport/src/postgres/tokens.rs`), reason for reason: three base64url
//! parts, an HS256 header, the HMAC-SHA256 of `header.payload` under the key as the signature, `aud` the
//! configured audience, the identity the claims name (last segment of `xms_mirid`, else `upn`, else
//! `preferred_username`) the role, and `exp` after now. So any unexpired token for the role is accepted and
//! an expired one refused, as on Azure.
//!
//! `pgwi-token-check --check <config>` reads the configuration and exits 0 (or 2), judging nothing: the set-up's
//! test that the binary runs here.

use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::process::ExitCode;

use base64::Engine as _;
use serde_json::Value;

/// What a run's configuration file holds.
#[derive(Debug, PartialEq, Eq)]
struct Config {
    key: Vec<u8>,
    audience: String,
    log: String,
}

impl Config {
    /// Parses `key=<hex>`, `audience=<text>`, `log=<path>` lines (blank lines and `#` comments skipped).
    fn parse(text: &str) -> Result<Config, String> {
        let (mut key, mut audience, mut log) = (None, None, None);
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (name, value) = line
                .split_once('=')
                .ok_or_else(|| format!("not `name=value`: {line:?}"))?;
            match name {
                "key" => key = Some(hex(value).ok_or("key is not hexadecimal")?),
                "audience" => audience = Some(value.to_owned()),
                "log" => log = Some(value.to_owned()),
                other => return Err(format!("unknown setting {other:?}")),
            }
        }
        Ok(Config {
            key: key.ok_or("no key")?,
            audience: audience.ok_or("no audience")?,
            log: log.ok_or("no log")?,
        })
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The checker's judgement of one token.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    /// The token's `exp`, when it had a readable one (even if refused).
    exp: Option<i64>,
    /// Why, in the Perl checker's words.
    reason: String,
    accepted: bool,
}

/// A claim as text: a non-empty string, or a number (as Perl reads JSON). Objects, arrays, booleans and
/// null are not text.
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `exp` as an integer: a JSON number, or a string of digits (with an optional sign and fraction), truncated.
fn expiry(value: Option<&Value>) -> Option<i64> {
    let text = match value? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    let digits = text.strip_prefix('-').unwrap_or(&text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "1"));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let magnitude: i64 = whole.parse().ok()?;
    Some(if text.starts_with('-') {
        -magnitude
    } else {
        magnitude
    })
}

/// The identity the claims name: the last segment of `xms_mirid`, else `upn`, else `preferred_username`.
fn token_user(claims: &serde_json::Map<String, Value>) -> Option<String> {
    if let Some(mirid) = text(claims.get("xms_mirid"))
        && let Some(last) = mirid.split('/').rfind(|s| !s.is_empty())
    {
        return Some(last.to_owned());
    }
    ["upn", "preferred_username"]
        .iter()
        .find_map(|claim| text(claims.get(*claim)))
}

/// Equal, in time that depends only on the lengths.
fn same(x: &[u8], y: &[u8]) -> bool {
    x.len() == y.len() && x.iter().zip(y).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// Judges `token` for the role `user` at `now` (seconds since the epoch).
fn judge(token: &[u8], user: &[u8], now: i64, config: &Config) -> Verdict {
    let verdict = |exp, reason: String, accepted| Verdict {
        exp,
        reason,
        accepted,
    };
    let refuse = |exp, reason: String| verdict(exp, reason, false);
    let parts: Vec<&[u8]> = token.split(|&b| b == b'.').collect();
    let base64url = |p: &[u8]| {
        !p.is_empty()
            && p.iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    };
    if parts.len() != 3 || !parts.iter().all(|p| base64url(p)) {
        return refuse(None, "malformed: not three base64url parts".into());
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let object = |part: &[u8]| match engine
        .decode(part)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
    {
        Some(Value::Object(map)) => Some(map),
        _ => None,
    };
    let Some(header) = object(parts[0]) else {
        return refuse(None, "malformed: the header is not a JSON object".into());
    };
    let Some(claims) = object(parts[1]) else {
        return refuse(None, "malformed: the payload is not a JSON object".into());
    };
    let exp = expiry(claims.get("exp"));
    match text(header.get("alg")) {
        Some(alg) if alg == "HS256" => {}
        alg => {
            let alg = alg.unwrap_or_else(|| "(none)".into());
            return refuse(exp, format!("unsupported alg {alg}"));
        }
    }
    let signed = &token[..parts[0].len() + 1 + parts[1].len()];
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &config.key),
        signed,
    );
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
    if !same(expected.as_bytes(), parts[2]) {
        return refuse(exp, "bad signature".into());
    }
    match text(claims.get("aud")) {
        Some(aud) if aud == config.audience => {}
        aud => {
            let aud = aud.unwrap_or_else(|| "(none or not a string)".into());
            return refuse(exp, format!("wrong audience {aud}"));
        }
    }
    let Some(named) = token_user(&claims) else {
        return refuse(
            exp,
            "no identity claim (xms_mirid, upn, preferred_username)".into(),
        );
    };
    if named.as_bytes() != user {
        let user = String::from_utf8_lossy(user);
        return refuse(exp, format!("token is for {named}, not {user}"));
    }
    let Some(exp) = exp else {
        return refuse(None, "no exp claim".into());
    };
    if exp <= now {
        return refuse(Some(exp), format!("expired at {exp} (now {now})"));
    }
    verdict(Some(exp), format!("valid until {exp}"), true)
}

/// The password as pam_exec hands it: cut at the first NUL, trailing CR/LF removed.
fn password(mut input: Vec<u8>) -> Vec<u8> {
    if let Some(nul) = input.iter().position(|&b| b == 0) {
        input.truncate(nul);
    }
    while input.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        input.pop();
    }
    input
}

/// Printable ASCII kept, every other byte shown as `?` (the log is one line per check, tab-separated).
fn clean(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if (0x20..=0x7e).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// The log line for one check.
fn log_line(now: i64, user: &[u8], verdict: &Verdict) -> String {
    format!(
        "{now}\t{}\t{}\t{}\t{}\n",
        clean(user),
        verdict
            .exp
            .map_or_else(|| "-".to_owned(), |e| e.to_string()),
        if verdict.accepted { "accept" } else { "refuse" },
        clean(verdict.reason.as_bytes())
    )
}

/// Appends `line` under an exclusive lock (concurrent logins each write whole lines).
fn append(log: &str, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)?;
    file.lock()?;
    file.write_all(line.as_bytes())
}

fn read_config(path: &std::ffi::OsStr) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading {}: {e}", path.to_string_lossy()))?;
    Config::parse(&text).map_err(|e| format!("{}: {e}", path.to_string_lossy()))
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let (check_only, path) = match args.as_slice() {
        [flag, path] if flag == "--check" => (true, path),
        [path] => (false, path),
        _ => {
            eprintln!("usage: pgwi-token-check [--check] CONFIG (run by pam_exec expose_authtok)");
            return ExitCode::from(2);
        }
    };
    let config = match read_config(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pgwi token checker: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        return ExitCode::SUCCESS;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let user = std::env::var_os("PAM_USER").unwrap_or_default();
    let user = user.as_bytes();
    let mut input = Vec::new();
    // An unreadable stdin is an empty password: refused as malformed, as the Perl checker does.
    let _ = std::io::stdin()
        .lock()
        .take(64 * 1024)
        .read_to_end(&mut input);
    let verdict = judge(&password(input), user, now, &config);
    if let Err(e) = append(&config.log, &log_line(now, user, &verdict)) {
        eprintln!("pgwi token checker: cannot append to {}: {e}", config.log);
    }
    if verdict.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const AUDIENCE: &str = "https://ossrdbms-aad.database.windows.net";

    fn config() -> Config {
        Config {
            key: KEY.to_vec(),
            audience: AUDIENCE.into(),
            log: "/dev/null".into(),
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn sign(header: &str, claims: &Value, key: &[u8]) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            signed.as_bytes(),
        );
        format!("{signed}.{}", b64(tag.as_ref()))
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn judges_like_the_perl_checker() {
        // Proves: each of the Perl checker's rules, with its reason word for word: a valid token for the role
        // in, and out an expired one, a wrong key, audience, role or alg, no identity, no exp, and garbage.
        let now = 1_764_400_000;
        let claims = |aud: &str, user: &str, exp: Value| serde_json::json!({"aud": aud, "exp": exp, "xms_mirid": format!("/subscriptions/0/x/{user}")});
        let valid = claims(AUDIENCE, "app", (now + 60).into());
        let cases: Vec<(String, bool, String)> = vec![
            (
                sign(HS256, &valid, KEY),
                true,
                format!("valid until {}", now + 60),
            ),
            (
                sign(HS256, &claims(AUDIENCE, "app", (now - 1).into()), KEY),
                false,
                format!("expired at {} (now {now})", now - 1),
            ),
            (
                sign(HS256, &claims(AUDIENCE, "app", now.into()), KEY),
                false,
                format!("expired at {now} (now {now})"),
            ),
            (
                sign(HS256, &valid, b"another key"),
                false,
                "bad signature".into(),
            ),
            (
                sign(
                    HS256,
                    &claims("https://example.org", "app", (now + 60).into()),
                    KEY,
                ),
                false,
                "wrong audience https://example.org".into(),
            ),
            (
                sign(HS256, &claims(AUDIENCE, "other", (now + 60).into()), KEY),
                false,
                "token is for other, not app".into(),
            ),
            (
                sign(r#"{"alg":"none"}"#, &valid, KEY),
                false,
                "unsupported alg none".into(),
            ),
            (
                sign(r#"{"typ":"JWT"}"#, &valid, KEY),
                false,
                "unsupported alg (none)".into(),
            ),
            (
                sign(
                    HS256,
                    &serde_json::json!({"aud": AUDIENCE, "exp": now + 60}),
                    KEY,
                ),
                false,
                "no identity claim (xms_mirid, upn, preferred_username)".into(),
            ),
            (
                sign(
                    HS256,
                    &serde_json::json!({"aud": AUDIENCE, "upn": "app"}),
                    KEY,
                ),
                false,
                "no exp claim".into(),
            ),
            (
                sign(
                    HS256,
                    &serde_json::json!({"aud": AUDIENCE, "upn": "app", "exp": format!("{}.5", now + 9)}),
                    KEY,
                ),
                true,
                format!("valid until {}", now + 9),
            ),
            (
                sign(
                    HS256,
                    &serde_json::json!({"exp": now + 60, "upn": "app"}),
                    KEY,
                ),
                false,
                "wrong audience (none or not a string)".into(),
            ),
            (
                "not-a-token".into(),
                false,
                "malformed: not three base64url parts".into(),
            ),
            (
                "a..b".into(),
                false,
                "malformed: not three base64url parts".into(),
            ),
            (
                format!("{}.e30.x", b64(b"[]")),
                false,
                "malformed: the header is not a JSON object".into(),
            ),
            (
                format!("{}.bm9w.x", b64(HS256.as_bytes())),
                false,
                "malformed: the payload is not a JSON object".into(),
            ),
        ];
        for (token, accepted, reason) in cases {
            let verdict = judge(token.as_bytes(), b"app", now, &config());
            assert_eq!(
                (verdict.accepted, verdict.reason.as_str()),
                (accepted, reason.as_str()),
                "{token}"
            );
        }
    }

    #[test]
    fn identity_comes_from_mirid_then_upn_then_preferred_username() {
        // Proves: the role is the last non-empty segment of xms_mirid, else upn, else preferred_username.
        let map = |v: Value| v.as_object().cloned().expect("object");
        let both = serde_json::json!({"xms_mirid": "/a/b/app/", "upn": "u"});
        assert_eq!(token_user(&map(both)).as_deref(), Some("app"));
        let upn = serde_json::json!({"xms_mirid": "///", "upn": "u", "preferred_username": "p"});
        assert_eq!(token_user(&map(upn)).as_deref(), Some("u"));
        let preferred = serde_json::json!({"upn": "", "preferred_username": "p"});
        assert_eq!(token_user(&map(preferred)).as_deref(), Some("p"));
    }

    #[test]
    fn password_log_line_and_config_are_read_as_the_perl_checker_reads_them() {
        // Proves: the password is cut at its NUL and loses a trailing newline; the log line is the Perl
        // checker's shape with unprintable bytes as `?`; the configuration file parses and a bad one is refused.
        assert_eq!(password(b"abc\n\0junk".to_vec()), b"abc");
        let verdict = Verdict {
            exp: None,
            reason: "token is for \u{e9}, not x".into(),
            accepted: false,
        };
        assert_eq!(
            log_line(7, b"a\tb", &verdict),
            "7\ta?b\t-\trefuse\ttoken is for ??, not x\n"
        );
        let parsed = Config::parse("# run\nkey=00ff\naudience=aud\nlog=/tmp/l\n").expect("config");
        assert_eq!(
            parsed,
            Config {
                key: vec![0, 255],
                audience: "aud".into(),
                log: "/tmp/l".into()
            }
        );
        assert!(Config::parse("key=0g\naudience=a\nlog=l").is_err());
        assert!(Config::parse("audience=a\nlog=l").is_err());
    }
}
