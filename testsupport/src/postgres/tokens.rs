//! Token roles: the test server judges Entra-style access tokens the way Azure Database for PostgreSQL does.
//!
//! Roles in [`super::TOKEN_GROUP`] authenticate with `pam` (`pg_hba.conf`: `hostssl all +pgwi_token all pam
//! pamservice=<service>`, ahead of the other lines). The PAM service runs `pam_exec expose_authtok` with a
//! checker that holds the run's HMAC key and the expected audience. The checker runs as the server's OS user,
//! reads the password (the token) on stdin and the role in `PAM_USER`, and accepts (exit 0) exactly when: the
//! token has three base64url parts, its header says HS256, the HMAC-SHA256 of `header.payload` under the key
//! is its signature, `aud` is [`crate::jwt::POSTGRES_AUDIENCE`], the identity its claims name (last segment of
//! `xms_mirid`, else `upn`, else `preferred_username`) is the role, and `exp` is after now. So any unexpired
//! token for the role is accepted, and an expired one refused, as on Azure. It appends one line per check to
//! its log (time, role, `exp`, verdict, reason; never the token), which [`super::TestPostgres::token_checks`]
//! reads back.
//!
//! Two checkers follow these rules, reason for reason. The compiled one, `pgwi-token-check`
//! (`testsupport/token-check`; in the test image at [`COMPILED_CHECKER_IN_IMAGE`], built by the native backend
//! with cargo), reads the key, audience and log from a configuration file ([`checker_config`]) and costs about
//! what a scram login costs. The Perl one ([`checker_script`], generated for the run) starts an interpreter per
//! login (tens of milliseconds of CPU); it is used only where the compiled one is not: an older image, or a
//! native run without cargo.
//!
//! PAM hands the checker at most 511 bytes of the password: tokens must stay compact (see
//! [`crate::jwt::sign_compact`]).

use std::path::{Path, PathBuf};

use crate::TestSupportError;

/// The checker, with `@KEY_HEX@`, `@AUDIENCE@` and `@LOG@` to fill in.
const CHECKER_TEMPLATE: &str = r#"#!/usr/bin/perl
# pgwi test bench: judges a token role's password the way Azure Database for PostgreSQL judges an Entra ID
# access token. Run by pam_exec (expose_authtok) as the server's OS user: the token arrives on stdin, the role
# in PAM_USER. Exit 0 accepts, 1 refuses. One line per check is appended to the log; never the token.
use strict;
use warnings;
use Digest::SHA qw(hmac_sha256);
use Fcntl qw(:flock);
use JSON::PP ();
use MIME::Base64 qw(decode_base64url encode_base64url);

my $KEY      = pack 'H*', '@KEY_HEX@';
my $AUDIENCE = '@AUDIENCE@';
my $LOG      = '@LOG@';

sub text { my ($v) = @_; return defined $v && !ref $v && length $v ? $v : undef }

sub same {
    my ($x, $y) = @_;
    return 0 unless length $x == length $y;
    my $diff = 0;
    $diff |= ord(substr $x, $_, 1) ^ ord(substr $y, $_, 1) for 0 .. length($x) - 1;
    return $diff == 0;
}

# The identity the claims name: the last segment of xms_mirid, else upn, else preferred_username.
sub token_user {
    my ($claims) = @_;
    if (defined(my $mirid = text($claims->{xms_mirid}))) {
        my @segments = grep { length } split m{/}, $mirid;
        return $segments[-1] if @segments;
    }
    for my $claim (qw(upn preferred_username)) {
        my $value = text($claims->{$claim});
        return $value if defined $value;
    }
    return undef;
}

# Returns (exp or undef, reason, accepted).
sub judge {
    my ($token, $user, $now) = @_;
    my @parts = split /\./, $token, -1;
    return (undef, 'malformed: not three base64url parts')
        unless @parts == 3 && !grep { !/\A[A-Za-z0-9_-]+\z/ } @parts;
    my $json   = JSON::PP->new->utf8;
    my $header = eval { $json->decode(decode_base64url($parts[0])) };
    return (undef, 'malformed: the header is not a JSON object') unless ref $header eq 'HASH';
    my $claims = eval { $json->decode(decode_base64url($parts[1])) };
    return (undef, 'malformed: the payload is not a JSON object') unless ref $claims eq 'HASH';
    my $exp = $claims->{exp};
    $exp = defined $exp && !ref $exp && $exp =~ /\A-?\d+(?:\.\d+)?\z/ ? int $exp : undef;
    my $alg = text($header->{alg});
    return ($exp, 'unsupported alg ' . (defined $alg ? $alg : '(none)'))
        unless defined $alg && $alg eq 'HS256';
    return ($exp, 'bad signature')
        unless same(encode_base64url(hmac_sha256("$parts[0].$parts[1]", $KEY)), $parts[2]);
    my $aud = text($claims->{aud});
    return ($exp, 'wrong audience ' . (defined $aud ? $aud : '(none or not a string)'))
        unless defined $aud && $aud eq $AUDIENCE;
    my $named = token_user($claims);
    return ($exp, 'no identity claim (xms_mirid, upn, preferred_username)') unless defined $named;
    utf8::encode($named);
    return ($exp, "token is for $named, not $user") unless $named eq $user;
    return ($exp, 'no exp claim') unless defined $exp;
    return ($exp, "expired at $exp (now $now)") unless $exp > $now;
    return ($exp, 'valid until ' . $exp, 1);
}

my $now   = time;
my $user  = defined $ENV{PAM_USER} ? $ENV{PAM_USER} : '';
my $token = do { local $/; <STDIN> };
$token = '' unless defined $token;
$token =~ s/\0.*\z//s;       # pam_exec ends the password with a NUL
$token =~ s/[\r\n]+\z//;
my ($exp, $reason, $accepted) = judge($token, $user, $now);
my $clean = sub { my ($s) = @_; $s =~ s/[^\x20-\x7e]/?/g; return $s };
if (open my $log, '>>', $LOG) {
    flock $log, LOCK_EX;
    printf {$log} "%d\t%s\t%s\t%s\t%s\n", $now, $clean->($user), defined $exp ? $exp : '-',
        $accepted ? 'accept' : 'refuse', $clean->($reason);
    close $log;
} else {
    print STDERR "pgwi token checker: cannot append to $LOG: $!\n";
}
exit($accepted ? 0 : 1);
"#;

/// The checker script for a run: `key` and the expected audience embedded, one line per check to `log`.
pub(crate) fn checker_script(key: &[u8], log: &str) -> Result<String, TestSupportError> {
    if log.contains(['\'', '\\', '\n']) {
        return Err(TestSupportError::Config(format!(
            "the token checker's log path {log:?} must not contain quotes, backslashes or newlines"
        )));
    }
    let key_hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    Ok(CHECKER_TEMPLATE
        .replace("@KEY_HEX@", &key_hex)
        .replace("@AUDIENCE@", crate::jwt::POSTGRES_AUDIENCE)
        .replace("@LOG@", log))
}

/// Where the test image (`testsupport/images/postgres/build.sh`) installs the compiled checker.
pub(crate) const COMPILED_CHECKER_IN_IMAGE: &str = "/usr/local/bin/pgwi-token-check";

/// The compiled checker's configuration file for a run: the key, the expected audience and the log.
pub(crate) fn checker_config(key: &[u8], log: &str) -> Result<String, TestSupportError> {
    if log.contains(['\n', '\r']) {
        return Err(TestSupportError::Config(format!(
            "the token checker's log path {log:?} must not contain newlines"
        )));
    }
    let key_hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "# pgwi test bench: pgwi-token-check's settings for this run (holds the run's key).\n\
         key={key_hex}\naudience={}\nlog={log}\n",
        crate::jwt::POSTGRES_AUDIENCE
    ))
}

/// `/etc/pam.d/<service>` for token roles judged by the compiled checker `binary`, reading `config`.
pub(crate) fn compiled_pam_service_file(binary: &str, config: &str) -> String {
    format!(
        "# pgwi test bench: token roles, judged as Azure judges Entra ID tokens (compiled checker).\n\
         auth     required  pam_exec.so expose_authtok quiet {binary} {config}\n\
         account  required  pam_permit.so\n"
    )
}

/// Builds the compiled checker with cargo (`$CARGO`, else `cargo` on `PATH`; the default profile, so the
/// test bench's own dependencies are reused) and returns the executable cargo reports, or why it could not.
/// `PGWI_TOKEN_CHECKER`, when set, names a checker to use instead.
pub(crate) fn compiled_checker() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PGWI_TOKEN_CHECKER").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("token-check/Cargo.toml");
    if !manifest.is_file() {
        return Err(format!("{} is not here", manifest.display()));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(&cargo)
        .args(["build", "--quiet", "--bin", "pgwi-token-check"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--message-format=json-render-diagnostics")
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("running {} build: {e}", cargo.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p pgwi-token-check failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "pgwi-token-check")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo reported no executable for pgwi-token-check".to_owned())
}

/// Runs `checker --check config`: the binary executes here and reads its configuration.
pub(crate) fn compiled_can_run(checker: &Path, config: &Path) -> Result<(), String> {
    match std::process::Command::new(checker)
        .arg("--check")
        .arg(config)
        .output()
    {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "{} --check failed: {}",
            checker.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(e) => Err(format!("{} is not runnable: {e}", checker.display())),
    }
}

/// The Perl that runs the checker (the checker's `#!` line says the same).
pub(crate) const PERL: &str = "/usr/bin/perl";

/// `/etc/pam.d/<service>` for token roles: the checker decides, every account is then permitted. The checker
/// is run through [`PERL`], so it needs no execute permission (and works from a `noexec` temporary directory).
pub(crate) fn pam_service_file(checker: &str) -> String {
    format!(
        "# pgwi test bench: token roles, judged as Azure judges Entra ID tokens.\n\
         auth     required  pam_exec.so expose_authtok quiet {PERL} {checker}\n\
         account  required  pam_permit.so\n"
    )
}

/// One token the server judged, as the checker logged it. The log never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCheck {
    /// When, in seconds since the epoch.
    pub checked_at: i64,
    /// The role that tried to log in (`PAM_USER`; bytes outside printable ASCII shown as `?`).
    pub user: String,
    /// The token's `exp`, when it had a readable one (even if the token was refused).
    pub expires_at: Option<i64>,
    /// Whether the server accepted it.
    pub accepted: bool,
    /// Why: `valid until …`, `expired at …`, `bad signature`, `wrong audience …`, `token is for …, not …`,
    /// `unsupported alg …`, `malformed: …`, `no exp claim`, `no identity claim …`.
    pub reason: String,
}

impl TokenCheck {
    /// The server accepted it and it had not expired when presented: what every login of pgwi must be.
    pub fn accepted_unexpired(&self) -> bool {
        self.accepted && self.expires_at.is_some_and(|exp| exp > self.checked_at)
    }
}

/// Parses the checker's log.
pub(crate) fn parse_log(log: &str) -> Result<Vec<TokenCheck>, TestSupportError> {
    log.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            parse_line(line).ok_or_else(|| {
                TestSupportError::Config(format!(
                    "line {} of the token checker's log is not `time<TAB>user<TAB>exp<TAB>accept|refuse<TAB>reason`: {line:?}",
                    number + 1
                ))
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Option<TokenCheck> {
    let mut fields = line.splitn(5, '\t');
    let checked_at = fields.next()?.parse().ok()?;
    let user = fields.next()?.to_owned();
    let expires_at = match fields.next()? {
        "-" => None,
        exp => Some(exp.parse().ok()?),
    };
    let accepted = match fields.next()? {
        "accept" => true,
        "refuse" => false,
        _ => return None,
    };
    let reason = fields.next()?.to_owned();
    Some(TokenCheck {
        checked_at,
        user,
        expires_at,
        accepted,
        reason,
    })
}

/// Whether the server judges tokens, and where its checker logs.
#[derive(Debug, Clone)]
pub(crate) enum TokenChecking {
    /// Token roles log in with valid tokens; the log is a file on this machine.
    File(PathBuf),
    /// Token roles log in with valid tokens; the log is a file inside this container.
    Container { id: String, log: String },
    /// The server cannot judge tokens, and this says why and how to fix it.
    Unavailable(String),
}

impl TokenChecking {
    /// Reads every check so far.
    pub(crate) fn read(&self) -> Result<Vec<TokenCheck>, TestSupportError> {
        match self {
            TokenChecking::File(path) => parse_log(
                &std::fs::read_to_string(path)
                    .map_err(TestSupportError::io(format!("reading {}", path.display())))?,
            ),
            TokenChecking::Container { id, log } => {
                let output = std::process::Command::new("docker")
                    .args(["exec", id, "cat", log])
                    .output()
                    .map_err(TestSupportError::io(format!(
                        "running `docker exec {id} cat {log}` to read the token checks (the docker CLI \
                         must be on PATH)"
                    )))?;
                if !output.status.success() {
                    return Err(TestSupportError::NoTokenChecks(format!(
                        "`docker exec {id} cat {log}` failed: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    )));
                }
                parse_log(&String::from_utf8_lossy(&output.stdout))
            }
            TokenChecking::Unavailable(why) => Err(TestSupportError::NoTokenChecks(why.clone())),
        }
    }

    /// `Ok` when token roles can log in.
    pub(crate) fn available(&self) -> Result<(), TestSupportError> {
        match self {
            TokenChecking::Unavailable(why) => Err(TestSupportError::NoTokenChecks(why.clone())),
            _ => Ok(()),
        }
    }
}

/// `pam_exec.so` on this machine, if any.
pub(crate) fn find_pam_exec() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/lib", "/usr/lib", "/lib64", "/usr/lib64"]
        .iter()
        .flat_map(|root| {
            let root = Path::new(root);
            let nested = std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path().join("security"));
            std::iter::once(root.join("security")).chain(nested)
        })
        .collect();
    dirs.dedup();
    dirs.into_iter()
        .map(|dir| dir.join("pam_exec.so"))
        .find(|path| path.is_file())
}

/// Whether the `postgres` binary links libpam (Debian's and most distributions' builds do).
pub(crate) fn built_with_pam(postgres: &Path) -> Result<bool, TestSupportError> {
    let binary = std::fs::read(postgres).map_err(TestSupportError::io(format!(
        "reading {}",
        postgres.display()
    )))?;
    Ok(binary.windows(9).any(|w| w == b"libpam.so"))
}

/// Compiles the checker with `perl -c` (which loads its modules), so a missing Perl or module is reported at
/// start-up rather than as refused logins.
pub(crate) fn perl_can_run(checker: &Path) -> Result<(), String> {
    match std::process::Command::new(PERL)
        .arg("-c")
        .arg(checker)
        .output()
    {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "perl cannot compile the token checker: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(e) => Err(format!("{PERL} is not runnable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{POSTGRES_AUDIENCE, sign_compact, unix_now};
    use serde_json::json;

    #[test]
    fn log_lines_parse_and_bad_ones_are_reported() {
        // Scenario: the checker's tab-separated lines become TokenChecks; a line of another shape is an error
        // naming its line number.
        let checks = parse_log(
            "1764400000\tapp\t1764403600\taccept\tvalid until 1764403600\n\
             1764400001\tapp\t-\trefuse\tmalformed: not three base64url parts\n",
        )
        .expect("parse");
        assert_eq!(
            checks,
            vec![
                TokenCheck {
                    checked_at: 1764400000,
                    user: "app".into(),
                    expires_at: Some(1764403600),
                    accepted: true,
                    reason: "valid until 1764403600".into()
                },
                TokenCheck {
                    checked_at: 1764400001,
                    user: "app".into(),
                    expires_at: None,
                    accepted: false,
                    reason: "malformed: not three base64url parts".into()
                },
            ]
        );
        let error = parse_log("1\tapp\t-\tmaybe\twhy\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 1"), "{error}");
    }

    /// Runs a checker as pam_exec would: `command` (the checker and its argument), the password and a NUL on
    /// stdin, the role in `PAM_USER`.
    fn run_checker(command: &[&Path], user: &str, token: &str) -> bool {
        use std::io::Write as _;
        let mut child = std::process::Command::new(command[0])
            .args(&command[1..])
            .env_clear()
            .env("PAM_USER", user)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run the checker");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(token.as_bytes()).expect("write");
        stdin.write_all(b"\0").expect("write");
        drop(stdin);
        child.wait().expect("wait").success()
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// Runs the checker `command` on a valid token for the role and on an expired one, a wrong signature, a
    /// wrong audience, another role's token and garbage, and checks each verdict and reason in `log`, which
    /// never holds the token.
    fn judges_tokens_like_azure(command: &[&Path], log: &Path) {
        let now = unix_now();
        let token = |aud: &str, user: &str, exp: i64, key: &[u8]| {
            sign_compact(
                &json!({"aud": aud, "exp": exp, "iat": now, "xms_mirid": format!("/subscriptions/0/x/{user}")}),
                key,
            )
        };
        let valid = token(POSTGRES_AUDIENCE, "app", now + 60, KEY);
        let cases = [
            (valid.clone(), true, "valid until"),
            (
                token(POSTGRES_AUDIENCE, "app", now - 1, KEY),
                false,
                "expired at",
            ),
            (
                token(POSTGRES_AUDIENCE, "app", now + 60, b"another key"),
                false,
                "bad signature",
            ),
            (
                token("https://example.org", "app", now + 60, KEY),
                false,
                "wrong audience https://example.org",
            ),
            (
                token(POSTGRES_AUDIENCE, "other", now + 60, KEY),
                false,
                "token is for other, not app",
            ),
            ("not-a-token".to_owned(), false, "malformed"),
        ];
        for (token, accepted, _) in &cases {
            assert_eq!(run_checker(command, "app", token), *accepted);
        }
        let logged = std::fs::read_to_string(log).expect("log");
        let checks = parse_log(&logged).expect("parse");
        assert_eq!(checks.len(), cases.len());
        for (check, (token, accepted, reason)) in checks.iter().zip(&cases) {
            assert_eq!(check.accepted, *accepted, "{check:?}");
            assert!(check.reason.starts_with(reason), "{check:?}");
            assert_eq!(check.user, "app");
            assert!(!logged.contains(token.as_str()));
        }
        assert_eq!(checks[0].expires_at, Some(now + 60));
    }

    #[test]
    fn perl_checker_judges_tokens_like_azure() {
        // Scenario: run directly (no PAM), the generated Perl checker accepts a valid token for the role and
        // refuses an expired one, a wrong signature, a wrong audience, another role's token and garbage,
        // logging a reason for each and never the token.
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("checks.log");
        let checker = dir.path().join("check");
        std::fs::write(
            &checker,
            checker_script(KEY, log.to_str().expect("utf-8")).expect("script"),
        )
        .expect("write");
        perl_can_run(&checker).expect("perl compiles the checker");
        judges_tokens_like_azure(&[Path::new(PERL), &checker], &log);
    }

    #[test]
    fn compiled_checker_judges_tokens_like_azure() {
        // Scenario: the same tokens, the same verdicts and reasons from the compiled checker (built with
        // cargo as the native backend builds it) reading its run's configuration file.
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("checks.log");
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            checker_config(KEY, log.to_str().expect("utf-8")).expect("config"),
        )
        .expect("write");
        let checker = compiled_checker().expect("cargo builds pgwi-token-check");
        compiled_can_run(&checker, &config).expect("the checker reads its configuration");
        judges_tokens_like_azure(&[&checker, &config], &log);
    }
}
