//! pgwi's configuration: built-in defaults, then a profile of `pgwi.toml`, then (when asked for, as the
//! `pgwi` binary does) the original demo's variables (`DBHOST`, `DBNAME`, `DBUSER`, `SSL_MODE`), then `PGWI_*`
//! variables (`__` between levels), then command-line flags. Every error names the key, the layer it came from, and what was expected.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::{Figment, Profile};
use pgwi_credentials::CredentialConfig;
use serde::{Deserialize, Serialize};

/// The file read when neither [`ConfigSources::file`] nor `PGWI_CONFIG` names one (only if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "pgwi.toml";
/// The profile used when neither [`ConfigSources::profile`] nor `PGWI_PROFILE` names one.
pub const DEFAULT_PROFILE: &str = "default";

/// All of pgwi's settings. Top-level tables other than these are refused, except the ones the caller
/// declares as its own ([`ConfigSources::app_sections`]), which it reads with [`LoadedConfig::section`].
///
/// Checked once: by [`load`] (whose errors name the layer each value came from), or, for a configuration
/// built in code, when [`crate::connect`] or [`crate::proxy::Proxy::start`] use it.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where and how to connect.
    pub database: DatabaseConfig,
    /// Where passwords come from.
    pub credential: CredentialConfig,
    /// What [`load`] checked, so that connecting does not check it again; a value changed since is checked
    /// again at connect.
    #[serde(skip)]
    checked_by_loader: Option<CheckedByLoader>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database", &self.database)
            .field("credential", &self.credential)
            .finish()
    }
}

/// The values [`load`] checked: the `database` section, and the `credential` section as its `Debug` shows
/// it (every key the check reads; secrets redacted, so nothing secret is kept here).
#[derive(Clone, PartialEq)]
struct CheckedByLoader {
    database: DatabaseConfig,
    credential: String,
}

impl CheckedByLoader {
    fn of(config: &Config) -> Self {
        Self {
            database: config.database.clone(),
            credential: format!("{:?}", config.credential),
        }
    }
}

/// TLS requirements for the connection, as libpq names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS. Refused for non-local hosts unless `allow_insecure`.
    Disable,
    /// TLS if the server offers it, else plaintext. Refused for non-local hosts unless `allow_insecure`.
    Prefer,
    /// TLS without checking the certificate (warned about at start for a non-local host).
    Require,
    /// TLS with the certificate checked against the CAs of `ssl_root_cert` alone, not the host name (warned
    /// about at start for a non-local host). Without `ssl_root_cert` it is used as `VerifyFull`: with the
    /// public roots only the name makes the check mean anything. See [`crate::tls_rules`].
    VerifyCa,
    /// TLS with the certificate and the host name checked. The default.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = String;

    /// Parses libpq's names: `disable`, `prefer`, `require`, `verify-ca`, `verify-full`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim() {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "{other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )),
        }
    }
}

impl SslMode {
    /// True for modes that may send the password in the clear.
    pub fn is_below_require(self) -> bool {
        matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// The `database` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Server host name (`host` or `host:port`; the demo's `DBHOST`).
    #[serde(deserialize_with = "text::optional")]
    pub host: Option<String>,
    /// Server port. Default 5432.
    pub port: u16,
    /// Database name (the demo's `DBNAME`).
    #[serde(deserialize_with = "text::optional")]
    pub name: Option<String>,
    /// Database user (the demo's `DBUSER`): the managed identity's NAME, or `auto` to derive it from the
    /// access token's claims.
    #[serde(deserialize_with = "text::optional")]
    pub user: Option<String>,
    /// TLS mode (the demo's `SSL_MODE`). Default `verify-full`.
    pub sslmode: SslMode,
    /// A PEM file of CAs: trusted besides the built-in (Mozilla's) roots with `verify-full`, alone with
    /// `verify-ca` (see [`crate::tls_rules`]).
    pub ssl_root_cert: Option<PathBuf>,
    /// Shown in `pg_stat_activity`. Default `pgwi`.
    pub application_name: String,
    /// Pool size. Default 5.
    pub max_connections: u32,
    /// How long connecting may take, retries included. Default 30.
    pub connect_timeout_secs: u64,
    /// `statement_timeout` for every connection, in seconds (0: none). Default 60.
    pub statement_timeout_secs: u64,
    /// Close connections older than this (it is also kept below the token's lifetime). Default 1800.
    pub max_lifetime_secs: u64,
    /// Allow `sslmode` below `require` against a host that is not local. Default false.
    pub allow_insecure: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: 5432,
            name: None,
            user: None,
            sslmode: SslMode::VerifyFull,
            ssl_root_cert: None,
            application_name: "pgwi".into(),
            max_connections: 5,
            connect_timeout_secs: 30,
            statement_timeout_secs: 60,
            max_lifetime_secs: 1800,
            allow_insecure: false,
        }
    }
}

impl DatabaseConfig {
    /// The server's host and port: `database.host` split (`host:port`, the demo's `DBHOST` form), the port
    /// `database.port` unless the host names one.
    pub(crate) fn host_and_port(&self) -> Result<(String, u16), ConfigError> {
        let (host, port) =
            split_host_port(self.host.as_deref().unwrap_or_default()).map_err(|problem| {
                ConfigError::rejected(
                    "database.host",
                    "configuration",
                    problem,
                    "write host or host:port",
                )
            })?;
        Ok((host, port.unwrap_or(self.port)))
    }
}

/// Accepts strings and, because environment values are parsed, numbers and booleans as text.
mod text {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }

    pub(super) fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Loose>::deserialize(d)?.map(|v| match v {
            Loose::Text(s) => s,
            Loose::Int(i) => i.to_string(),
            Loose::Float(f) => f.to_string(),
            Loose::Bool(b) => b.to_string(),
        }))
    }
}

/// Command-line flags that override configuration (`None`: not given).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--host`.
    pub host: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--database`.
    pub name: Option<String>,
    /// `--user`.
    pub user: Option<String>,
    /// `--sslmode`.
    pub sslmode: Option<SslMode>,
    /// `--credential`.
    pub credential_kind: Option<String>,
}

/// Where to look for configuration.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// `--config`: a file that must exist. Else `PGWI_CONFIG`, else `./pgwi.toml` if present.
    pub file: Option<PathBuf>,
    /// `--profile`. Else `PGWI_PROFILE`, else `default`.
    pub profile: Option<String>,
    /// Command-line flags.
    pub overrides: Overrides,
    /// Read the original demo's variables `DBHOST`, `DBNAME`, `DBUSER` and `SSL_MODE` (between the file and
    /// `PGWI_*`). Off by default: a host application's environment may use those names for something else.
    /// The `pgwi` binary turns it on.
    pub demo_variables: bool,
    /// Top-level tables the application owns (e.g. `admin` for the `pgwi` binary): accepted next to
    /// `database` and `credential`, and read with [`LoadedConfig::section`].
    pub app_sections: Vec<String>,
}

/// A configuration error: which key, from which layer, what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value could not be read as the type the key needs.
    #[error("configuration: {message}{}", context(.file, .profile))]
    Invalid {
        /// figment's message (key, layer, expected type).
        message: String,
        /// The file in use, if any.
        file: Option<PathBuf>,
        /// The selected profile.
        profile: String,
    },
    /// A named file or profile does not exist.
    #[error("configuration: {0}")]
    NotFound(String),
    /// A value is present but not acceptable.
    #[error("configuration: {key} {problem} (from {origin}); fix: {fix}")]
    Rejected {
        /// The key, e.g. `database.host`.
        key: String,
        /// Where its value came from (file, variable, flag, default).
        origin: String,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
}

impl ConfigError {
    /// A value that is present but not acceptable: its key, where it came from, what is wrong, the fix.
    pub fn rejected(
        key: impl Into<String>,
        origin: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError::Rejected {
            key: key.into(),
            origin: origin.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

fn context(file: &Option<PathBuf>, profile: &str) -> String {
    match file {
        Some(file) => format!(" (config file {}, profile {profile})", file.display()),
        None => format!(" (no config file, profile {profile})"),
    }
}

/// Configuration with the provenance of each value.
pub struct LoadedConfig {
    /// The resolved settings.
    pub config: Config,
    /// The selected profile.
    pub profile: String,
    /// The configuration file that was read, if any.
    pub file: Option<PathBuf>,
    figment: Figment,
}

impl fmt::Debug for LoadedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedConfig")
            .field("config", &self.config)
            .field("profile", &self.profile)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl LoadedConfig {
    /// The application's own top-level table `name` (declared in [`ConfigSources::app_sections`]), with the
    /// same layers and error reporting as pgwi's; its defaults when absent.
    pub fn section<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, ConfigError> {
        if self.figment.find_value(name).is_err() {
            return Ok(T::default());
        }
        self.figment
            .extract_inner(name)
            .map_err(|e| ConfigError::Invalid {
                message: describe_error(e, &self.profile),
                file: self.file.clone(),
                profile: self.profile.clone(),
            })
    }

    /// Where the value of `key` (e.g. `database.host`) came from: a file, a variable, a flag or the
    /// defaults.
    pub fn origin(&self, key: &str) -> String {
        origin(&self.figment, &self.profile, key)
    }
}

fn origin(figment: &Figment, profile: &str, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(metadata) => describe_layer(metadata, profile, key),
        None => "nowhere (not set)".into(),
    }
}

/// Names the layer a value came from: the variable, the file, the flags or the defaults.
fn describe_layer(metadata: &figment::Metadata, profile: &str, key: &str) -> String {
    let key = key.to_ascii_lowercase();
    if metadata.name.contains("PGWI_") {
        return format!(
            "environment variable PGWI_{}",
            key.replace('.', "__").to_ascii_uppercase()
        );
    }
    if metadata.name.contains("environment") {
        return match DEMO_VARIABLES.iter().find(|(_, k)| *k == key) {
            Some((var, _)) => format!("environment variable {var} (the original demo's)"),
            None => "environment".into(),
        };
    }
    match &metadata.source {
        Some(source) => format!("{source} (profile {profile})"),
        None => metadata.name.to_string(),
    }
}

fn describe_error(error: figment::Error, profile: &str) -> String {
    let key = error.path.join(".").to_ascii_lowercase();
    let layer = error
        .metadata
        .as_ref()
        .map(|m| describe_layer(m, profile, &key))
        .unwrap_or_else(|| "configuration".into());
    if key.is_empty() {
        format!("{} (from {layer})", error.kind)
    } else {
        format!("{key}: {} (from {layer})", error.kind)
    }
}

/// The demo's variables, mapped onto pgwi's keys.
const DEMO_VARIABLES: [(&str, &str); 4] = [
    ("DBHOST", "database.host"),
    ("DBNAME", "database.name"),
    ("DBUSER", "database.user"),
    ("SSL_MODE", "database.sslmode"),
];

/// Resolves configuration from all layers, then checks that it can connect somewhere.
pub fn load(sources: &ConfigSources) -> Result<LoadedConfig, ConfigError> {
    let mut loaded = load_unchecked(sources)?;
    validate(&loaded, sources.demo_variables)?;
    loaded.config.checked_by_loader = Some(CheckedByLoader::of(&loaded.config));
    Ok(loaded)
}

/// Resolves configuration from all layers with type checks only: for commands that do not connect (such as
/// `pgwi token`), where a missing host is no error.
pub fn load_unchecked(sources: &ConfigSources) -> Result<LoadedConfig, ConfigError> {
    let profile_from_env = sources.profile.is_none();
    let profile = sources
        .profile
        .clone()
        .or_else(|| Env::var("PGWI_PROFILE"))
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    let file = match (&sources.file, Env::var("PGWI_CONFIG")) {
        (Some(path), _) => Some(require_file(path, None)?),
        (None, Some(path)) => Some(require_file(Path::new(&path), Some("PGWI_CONFIG"))?),
        (None, None) => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()),
    };

    let mut figment = Figment::from(Defaults);
    if let Some(file) = &file {
        figment = figment.merge(Toml::file_exact(file).nested());
    }
    if sources.demo_variables {
        figment = figment.merge(
            Env::raw()
                .only(&DEMO_VARIABLES.map(|(var, _)| var))
                .map(|var| {
                    DEMO_VARIABLES
                        .iter()
                        .find(|(v, _)| var.as_str().eq_ignore_ascii_case(v))
                        .map_or(var.into(), |(_, key)| (*key).into())
                })
                .global(),
        );
    }
    figment = figment
        .merge(
            Env::prefixed("PGWI_")
                .filter(|key| key.as_str().contains("__"))
                .split("__")
                .global(),
        )
        .merge(Flags(overrides_tree(&sources.overrides)));

    if profile != DEFAULT_PROFILE
        && file.is_some()
        && !figment
            .profiles()
            .any(|p| p.as_str().as_str().eq_ignore_ascii_case(&profile))
    {
        let known: Vec<String> = figment
            .profiles()
            .filter(|p| *p != Profile::Global)
            .map(|p| p.as_str().to_string())
            .collect();
        return Err(ConfigError::NotFound(format!(
            "profile {profile:?}{} is not in {}; profiles there: {}",
            if profile_from_env {
                " (from PGWI_PROFILE)"
            } else {
                ""
            },
            file.as_deref()
                .map_or_else(String::new, |f| f.display().to_string()),
            known.join(", ")
        )));
    }
    let figment = figment.select(profile.as_str());
    let invalid = |e: figment::Error| ConfigError::Invalid {
        message: describe_error(e, &profile),
        file: file.clone(),
        profile: profile.clone(),
    };
    let tables: std::collections::BTreeMap<String, figment::value::Value> =
        figment.extract().map_err(invalid)?;
    if let Some(unknown) = tables.keys().find(|key| {
        !["database", "credential"].contains(&key.as_str()) && !sources.app_sections.contains(key)
    }) {
        return Err(ConfigError::rejected(
            unknown.clone(),
            origin(&figment, &profile, unknown),
            "is not a known section",
            format!(
                "known sections: database, credential{}",
                sources
                    .app_sections
                    .iter()
                    .map(|s| format!(", {s}"))
                    .collect::<String>()
            ),
        ));
    }
    let config: Config = figment.extract().map_err(invalid)?;
    Ok(LoadedConfig {
        config,
        profile,
        file,
        figment,
    })
}

/// The built-in defaults as a named figment layer.
struct Defaults;

impl figment::Provider for Defaults {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("built-in defaults")
    }

    fn data(&self) -> Result<figment::value::Map<Profile, figment::value::Dict>, figment::Error> {
        Serialized::defaults(Config::default()).data()
    }
}

/// Command-line flags as a figment layer, named so errors and `origin` say where a value came from.
struct Flags(serde_json::Value);

impl figment::Provider for Flags {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("command-line flags")
    }

    fn data(&self) -> Result<figment::value::Map<Profile, figment::value::Dict>, figment::Error> {
        Serialized::globals(&self.0).data()
    }
}

fn overrides_tree(overrides: &Overrides) -> serde_json::Value {
    let mut database = serde_json::Map::new();
    let mut put = |key: &str, value: Option<serde_json::Value>| {
        if let Some(value) = value {
            database.insert(key.into(), value);
        }
    };
    put("host", overrides.host.clone().map(Into::into));
    put("port", overrides.port.map(Into::into));
    put("name", overrides.name.clone().map(Into::into));
    put("user", overrides.user.clone().map(Into::into));
    put("sslmode", overrides.sslmode.map(|m| m.to_string().into()));
    let mut tree = serde_json::Map::new();
    if !database.is_empty() {
        tree.insert("database".into(), database.into());
    }
    if let Some(kind) = &overrides.credential_kind {
        tree.insert("credential".into(), serde_json::json!({ "kind": kind }));
    }
    tree.into()
}

/// `path` if it is a file; else the error, naming the variable it came from (`None`: the application named
/// it, [`ConfigSources::file`]).
fn require_file(path: &Path, variable: Option<&str>) -> Result<PathBuf, ConfigError> {
    if path.is_file() {
        return Ok(path.to_owned());
    }
    let (from, fix) = match variable {
        Some(variable) => (
            format!(" (from {variable})"),
            format!("point {variable} at the right path"),
        ),
        None => (String::new(), "name the right path".to_owned()),
    };
    Err(ConfigError::NotFound(format!(
        "the configuration file {}{from} does not exist; create it (see pgwi.example.toml) or {fix}",
        path.display()
    )))
}

/// True for host names that never leave this machine.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.starts_with('/')
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn validate(loaded: &LoadedConfig, demo_variables: bool) -> Result<(), ConfigError> {
    let unset = Unset::Loader {
        profile: &loaded.profile,
        demo_variables,
    };
    check(&loaded.config, &|key| loaded.origin(key), &unset)
}

impl Config {
    /// A configuration for `user` on `database` at `host:port`, `verify-full` TLS, every other setting at its
    /// default: where an application configures pgwi from code rather than with [`load`].
    pub fn for_server(
        host: impl Into<String>,
        port: u16,
        database: impl Into<String>,
        user: impl Into<String>,
    ) -> Self {
        let mut config = Self::default();
        config.database.host = Some(host.into());
        config.database.port = port;
        config.database.name = Some(database.into());
        config.database.user = Some(user.into());
        config.database.sslmode = SslMode::VerifyFull;
        config
    }

    /// The checks [`load`] makes, for a configuration built another way (an application's own settings):
    /// a host, database and user; TLS for remote hosts; sane pool and timing values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            self,
            &|_| "the configuration given to pgwi".into(),
            &Unset::InCode,
        )
    }

    /// Checks the configuration unless [`load`] did and nothing it checked has changed since: the one
    /// check every configuration gets before pgwi connects with it.
    pub(crate) fn check_once(&self) -> Result<(), ConfigError> {
        match &self.checked_by_loader {
            Some(checked) if *checked == CheckedByLoader::of(self) => Ok(()),
            _ => self.validate(),
        }
    }
}

/// Where a key that is not set could have been set: what the fix names.
enum Unset<'a> {
    /// The loader's layers: a profile of the file, `PGWI_*` variables, and the demo's variables if it read
    /// them.
    Loader {
        profile: &'a str,
        demo_variables: bool,
    },
    /// A configuration built in code: the field itself.
    InCode,
}

impl Unset<'_> {
    fn error(&self, key: &str) -> ConfigError {
        let fix = match self {
            Unset::InCode => format!("set {key}"),
            Unset::Loader {
                profile,
                demo_variables,
            } => {
                let demo = DEMO_VARIABLES
                    .iter()
                    .find(|(_, k)| *k == key)
                    .filter(|_| *demo_variables)
                    .map_or_else(String::new, |(var, _)| format!("{var}, "));
                let variable = format!("PGWI_{}", key.to_ascii_uppercase().replace('.', "__"));
                let field = key.rsplit('.').next().unwrap_or(key);
                format!(
                    "set {demo}{variable}, or `{field}` in the [{profile}] profile of pgwi.toml"
                )
            }
        };
        ConfigError::rejected(key, "nowhere", "is not set", fix)
    }
}

fn check(
    config: &Config,
    origin: &dyn Fn(&str) -> String,
    unset: &Unset<'_>,
) -> Result<(), ConfigError> {
    let db = &config.database;
    let reject = |key: &str, problem: String, fix: &str| {
        ConfigError::rejected(key, origin(key), problem, fix)
    };
    let host = db
        .host
        .as_deref()
        .filter(|h| !h.trim().is_empty())
        .ok_or_else(|| unset.error("database.host"))?;
    if db.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        return Err(unset.error("database.name"));
    }
    if db.user.as_deref().is_none_or(|u| u.trim().is_empty()) {
        return Err(unset.error("database.user"));
    }
    let (host, _) = split_host_port(host)
        .map_err(|problem| reject("database.host", problem, "write host or host:port"))?;
    // Allowed with allow_insecure: the warning is then the connection's own, said once when the pool or the
    // proxy starts (`TlsRules::announce`), as for require and verify-ca.
    if db.sslmode.is_below_require() && !is_local_host(&host) && !db.allow_insecure {
        return Err(reject(
            "database.sslmode",
            format!(
                "is {} against {host}, which may send the password or token in the clear",
                db.sslmode
            ),
            "use verify-full (Azure Database for PostgreSQL requires TLS), or set database.allow_insecure = true if you really mean it",
        ));
    }
    if db.max_connections == 0 {
        return Err(reject(
            "database.max_connections",
            "is 0".into(),
            "set it to 1 or more",
        ));
    }
    if db.connect_timeout_secs == 0 {
        return Err(reject(
            "database.connect_timeout_secs",
            "is 0".into(),
            "set the seconds connecting may take, e.g. 30",
        ));
    }
    if let Some(issue) = config.credential.timing_issue() {
        return Err(reject(issue.key, issue.problem, &issue.fix));
    }
    if let Some(ca) = &db.ssl_root_cert
        && !ca.is_file()
    {
        return Err(reject(
            "database.ssl_root_cert",
            format!("names {}, which does not exist", ca.display()),
            "point it at a PEM file of CA certificates",
        ));
    }
    Ok(())
}

/// Splits `host:port` (the demo's `DBHOST` form). IPv6 literals need brackets to carry a port.
pub fn split_host_port(host: &str) -> Result<(String, Option<u16>), String> {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        let (addr, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("{host:?} has an unclosed '['"))?;
        return match tail.strip_prefix(':') {
            Some(port) => Ok((
                addr.to_owned(),
                Some(
                    port.parse()
                        .map_err(|_| format!("{host:?} has a port that is not a number"))?,
                ),
            )),
            None if tail.is_empty() => Ok((addr.to_owned(), None)),
            None => Err(format!("{host:?} has text after ']'")),
        };
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => Ok((
            name.to_owned(),
            Some(
                port.parse()
                    .map_err(|_| format!("{host:?} has a port that is not a number"))?,
            ),
        )),
        _ => Ok((host.to_owned(), None)),
    }
}
