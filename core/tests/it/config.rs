//! Layered configuration: each layer overrides the one below, and each bad value gets one clear error.

use figment::Jail;
use pgwi_core::config::{self, ConfigSources, Overrides, SslMode};

const FILE: &str = r#"
[default.database]
host = "file-default.example.com"
name = "app"
user = "pgwi-app"

[aks.database]
host = "aks.postgres.database.azure.com"
port = 6432

[aks.credential]
kind = "workload-identity"
"#;

/// What the `pgwi` binary reads: the demo's variables too, and its own `admin` and `proxy` sections.
fn cronjob() -> ConfigSources {
    ConfigSources {
        demo_variables: true,
        app_sections: vec!["admin".into(), "proxy".into()],
        ..ConfigSources::default()
    }
}

fn load(sources: &ConfigSources) -> Result<config::LoadedConfig, String> {
    config::load(sources).map_err(|e| e.to_string())
}

#[test]
fn each_layer_overrides_the_one_below() {
    // Scenario: defaults < file's default profile < selected profile < demo variables < PGWI_* < flags,
    // and `origin` names the layer each value came from.
    Jail::expect_with(|jail| {
        jail.create_file("pgwi.toml", FILE)?;
        let sources = ConfigSources {
            profile: Some("aks".into()),
            ..cronjob()
        };

        let base = load(&cronjob())?;
        assert_eq!(
            base.config.database.host.as_deref(),
            Some("file-default.example.com")
        );
        assert_eq!(base.config.database.port, 5432, "built-in default");
        assert_eq!(
            base.config.database.sslmode,
            SslMode::VerifyFull,
            "built-in default"
        );
        assert_eq!(base.origin("database.port"), "built-in defaults");

        let profile = load(&sources)?;
        assert_eq!(
            profile.config.database.host.as_deref(),
            Some("aks.postgres.database.azure.com")
        );
        assert_eq!(profile.config.database.port, 6432);
        assert_eq!(
            profile.config.database.name.as_deref(),
            Some("app"),
            "inherited from default"
        );
        assert_eq!(profile.config.credential.kind, "workload-identity");
        assert!(
            profile.origin("database.host").contains("pgwi.toml"),
            "{}",
            profile.origin("database.host")
        );

        jail.set_env("DBHOST", "demo-host.example.com:5433");
        let demo = load(&sources)?;
        assert_eq!(
            demo.config.database.host.as_deref(),
            Some("demo-host.example.com:5433")
        );
        assert!(
            demo.origin("database.host").contains("DBHOST"),
            "{}",
            demo.origin("database.host")
        );

        jail.set_env("PGWI_DATABASE__HOST", "pgwi-env.example.com");
        jail.set_env("PGWI_CREDENTIAL__KIND", "az-cli");
        let env = load(&sources)?;
        assert_eq!(
            env.config.database.host.as_deref(),
            Some("pgwi-env.example.com")
        );
        assert_eq!(env.config.credential.kind, "az-cli");
        assert!(
            env.origin("database.host").contains("PGWI_DATABASE__HOST"),
            "{}",
            env.origin("database.host")
        );

        let flags = load(&ConfigSources {
            overrides: Overrides {
                host: Some("flag.example.com".into()),
                credential_kind: Some("static-password".into()),
                ..Overrides::default()
            },
            ..sources.clone()
        })?;
        assert_eq!(
            flags.config.database.host.as_deref(),
            Some("flag.example.com")
        );
        assert_eq!(flags.config.credential.kind, "static-password");
        assert!(
            flags.origin("database.host").contains("command-line"),
            "{}",
            flags.origin("database.host")
        );
        Ok(())
    });
}

#[test]
fn the_profile_comes_from_pgwi_profile_and_the_file_from_pgwi_config() {
    // Scenario: PGWI_PROFILE selects the profile and PGWI_CONFIG names a file outside the working directory.
    Jail::expect_with(|jail| {
        jail.create_dir("etc")?;
        jail.create_file("etc/custom.toml", FILE)?;
        jail.set_env("PGWI_CONFIG", "etc/custom.toml");
        jail.set_env("PGWI_PROFILE", "aks");

        let loaded = load(&cronjob())?;

        assert_eq!(loaded.profile, "aks");
        assert_eq!(loaded.config.database.port, 6432);
        assert_eq!(
            loaded.file.as_deref(),
            Some(std::path::Path::new("etc/custom.toml"))
        );
        Ok(())
    });
}

#[test]
fn demo_variables_alone_are_a_complete_configuration() {
    // Scenario: the original CronJob's DBHOST, DBNAME, DBUSER, SSL_MODE with no file are enough.
    Jail::expect_with(|jail| {
        jail.set_env("DBHOST", "psql-demo.postgres.database.azure.com");
        jail.set_env("DBNAME", "app");
        jail.set_env("DBUSER", "pgwi-app");
        jail.set_env("SSL_MODE", "require");

        let loaded = load(&cronjob())?;

        let db = &loaded.config.database;
        assert_eq!(
            db.host.as_deref(),
            Some("psql-demo.postgres.database.azure.com")
        );
        assert_eq!(db.name.as_deref(), Some("app"));
        assert_eq!(db.user.as_deref(), Some("pgwi-app"));
        assert_eq!(db.sslmode, SslMode::Require);
        Ok(())
    });
}

fn error_with(
    setup: impl FnOnce(&mut Jail) -> figment::error::Result<()>,
    sources: ConfigSources,
) -> String {
    let mut message = String::new();
    Jail::expect_with(|jail| {
        setup(jail)?;
        message = load(&sources).expect_err("loading must fail");
        Ok(())
    });
    message
}

fn complete_env(jail: &mut Jail) {
    jail.set_env("DBHOST", "db.example.com");
    jail.set_env("DBNAME", "app");
    jail.set_env("DBUSER", "pgwi-app");
}

#[test]
fn a_non_numeric_port_names_the_variable_and_the_type() {
    // Scenario: PGWI_DATABASE__PORT=abc is refused, naming the key, the variable and the expected type.
    let message = error_with(
        |jail| {
            complete_env(jail);
            jail.set_env("PGWI_DATABASE__PORT", "abc");
            Ok(())
        },
        cronjob(),
    );
    assert!(message.contains("database.port"), "{message}");
    assert!(message.contains("PGWI_DATABASE__PORT"), "{message}");
    assert!(message.contains("u16"), "{message}");
}

#[test]
fn a_bad_value_in_the_file_names_the_file() {
    // Scenario: a port written as text in pgwi.toml is refused, naming the file and the key.
    let message = error_with(
        |jail| {
            jail.create_file(
                "pgwi.toml",
                "[default.database]\nhost = \"h\"\nname = \"n\"\nuser = \"u\"\nport = \"five\"\n",
            )?;
            Ok(())
        },
        cronjob(),
    );
    assert!(message.contains("pgwi.toml"), "{message}");
    assert!(message.contains("database.port"), "{message}");
}

#[test]
fn an_unknown_key_is_refused() {
    // Scenario: a misspelt key (hostname for host) is an error, not silently ignored.
    let message = error_with(
        |jail| {
            jail.create_file("pgwi.toml", "[default.database]\nhostname = \"h\"\n")?;
            Ok(())
        },
        cronjob(),
    );
    assert!(message.contains("hostname"), "{message}");
}

#[test]
fn a_missing_host_says_where_to_set_it() {
    // Scenario: no host anywhere; the error names DBHOST and PGWI_DATABASE__HOST.
    let message = error_with(|_| Ok(()), cronjob());
    assert!(message.contains("database.host"), "{message}");
    assert!(message.contains("DBHOST"), "{message}");
    assert!(message.contains("PGWI_DATABASE__HOST"), "{message}");
}

#[test]
fn an_unknown_sslmode_lists_the_modes() {
    // Scenario: SSL_MODE=allow (not supported) is refused with the accepted values.
    let message = error_with(
        |jail| {
            complete_env(jail);
            jail.set_env("SSL_MODE", "allow");
            Ok(())
        },
        cronjob(),
    );
    assert!(message.contains("database.sslmode"), "{message}");
    assert!(message.contains("verify-full"), "{message}");
}

#[test]
fn weak_tls_to_a_remote_host_needs_allow_insecure() {
    // Scenario: sslmode=disable against a non-local host is refused unless allow_insecure = true; against
    // localhost it is allowed.
    let refused = error_with(
        |jail| {
            complete_env(jail);
            jail.set_env("SSL_MODE", "disable");
            Ok(())
        },
        cronjob(),
    );
    assert!(refused.contains("allow_insecure"), "{refused}");
    assert!(refused.contains("SSL_MODE"), "{refused}");

    Jail::expect_with(|jail| {
        complete_env(jail);
        jail.set_env("SSL_MODE", "disable");
        jail.set_env("PGWI_DATABASE__ALLOW_INSECURE", "true");
        assert_eq!(load(&cronjob())?.config.database.sslmode, SslMode::Disable);
        jail.set_env("PGWI_DATABASE__ALLOW_INSECURE", "false");
        jail.set_env("DBHOST", "localhost");
        assert_eq!(load(&cronjob())?.config.database.sslmode, SslMode::Disable);
        Ok(())
    });
}

#[test]
fn a_missing_profile_or_config_file_is_named() {
    // Scenario: a profile the file lacks lists the ones there; a configuration file that does not exist is
    // named.
    let profile = error_with(
        |jail| {
            jail.create_file("pgwi.toml", FILE)?;
            Ok(())
        },
        ConfigSources {
            profile: Some("staging".into()),
            ..cronjob()
        },
    );
    assert!(profile.contains("\"staging\""), "{profile}");
    assert!(profile.contains("aks"), "{profile}");

    let file = error_with(
        |_| Ok(()),
        ConfigSources {
            file: Some("missing.toml".into()),
            ..cronjob()
        },
    );
    // The library names no flag of the binary: `pgwi` adds "--config" where it prints errors.
    assert!(
        file.contains("missing.toml")
            && file.contains("does not exist")
            && !file.contains("--config"),
        "{file}"
    );
}

#[test]
fn the_example_configuration_loads_in_every_profile() {
    // Scenario: the checked-in pgwi.example.toml is valid for each of its profiles.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../pgwi.example.toml"))
            .expect("pgwi.example.toml");
    for (profile, kind) in [
        ("local", "static-password"),
        ("aks", "workload-identity"),
        ("admin", "az-cli"),
        ("azure", "managed-identity"),
        ("ci", "github-actions"),
        ("ci-secret", "client-secret"),
        ("ci-certificate", "client-certificate"),
        ("azd", "azure-developer-cli"),
    ] {
        Jail::expect_with(|jail| {
            jail.create_file("pgwi.toml", &example)?;
            let loaded = load(&ConfigSources {
                profile: Some(profile.into()),
                ..cronjob()
            })?;
            assert!(loaded.config.database.host.is_some(), "{profile}");
            assert_eq!(loaded.config.credential.kind, kind, "{profile}");
            Ok(())
        });
    }
}

#[rstest::rstest]
#[case::timeout_over_half_the_margin(
    "PGWI_CREDENTIAL__FETCH_TIMEOUT_SECS",
    "200",
    "credential.fetch_timeout_secs"
)]
#[case::zero_timeout(
    "PGWI_CREDENTIAL__FETCH_TIMEOUT_SECS",
    "0",
    "credential.fetch_timeout_secs"
)]
#[case::skew_not_below_the_margin(
    "PGWI_CREDENTIAL__EXPIRY_SKEW_SECS",
    "300",
    "credential.expiry_skew_secs"
)]
#[case::zero_margin(
    "PGWI_CREDENTIAL__REFRESH_MARGIN_SECS",
    "0",
    "credential.refresh_margin_secs"
)]
#[case::margin_of_years(
    "PGWI_CREDENTIAL__REFRESH_MARGIN_SECS",
    "99999999999",
    "credential.refresh_margin_secs"
)]
#[case::az_timeout_not_below_the_fetch_deadline(
    "PGWI_CREDENTIAL__AZ_CLI__TIMEOUT_SECS",
    "30",
    "credential.az_cli.timeout_secs"
)]
#[case::azd_timeout_not_below_the_fetch_deadline(
    "PGWI_CREDENTIAL__AZURE_DEVELOPER_CLI__TIMEOUT_SECS",
    "45",
    "credential.azure_developer_cli.timeout_secs"
)]
fn timing_keys_are_checked_against_each_other(
    #[case] variable: &str,
    #[case] value: &str,
    #[case] key: &str,
) {
    // Scenario: a fetch deadline that leaves no time to retry before expiry, a skew that swallows the
    // margin, or a margin that is zero or absurd (it once overflowed the refresher) is refused at load time,
    // naming the key and the variable it came from.
    let message = error_with(
        |jail| {
            complete_env(jail);
            jail.set_env(variable, value);
            Ok(())
        },
        cronjob(),
    );
    assert!(message.contains(key), "{message}");
    assert!(message.contains(variable), "{message}");
}

#[test]
fn a_library_ignores_the_demo_variables_unless_asked() {
    // Scenario: a host application whose environment has DBHOST/DBNAME/DBUSER for its own purposes loads
    // pgwi's configuration with the default sources: those variables are not read (PGWI_* are).
    Jail::expect_with(|jail| {
        complete_env(jail);
        jail.set_env("PGWI_DATABASE__HOST", "pgwi.example.com");
        jail.set_env("PGWI_DATABASE__NAME", "pgwi_app");
        jail.set_env("PGWI_DATABASE__USER", "pgwi-user");

        let library = load(&ConfigSources::default())?;
        let binary = load_unchecked_with_demo_only(jail)?;

        assert_eq!(
            library.config.database.host.as_deref(),
            Some("pgwi.example.com")
        );
        assert_eq!(library.config.database.user.as_deref(), Some("pgwi-user"));
        assert_eq!(binary.as_deref(), Some("db.example.com"));
        Ok(())
    });
}

/// The host the binary's sources resolve when only the demo's variables name one.
fn load_unchecked_with_demo_only(jail: &mut Jail) -> Result<Option<String>, String> {
    jail.clear_env();
    complete_env(jail);
    Ok(config::load_unchecked(&cronjob())
        .map_err(|e| e.to_string())?
        .config
        .database
        .host)
}

#[test]
fn sections_are_pgwis_or_declared_by_the_application() {
    // Scenario: a misspelt top-level table is refused naming the file and the known sections; a table the
    // application declared is accepted and read through `section`, with its own types checked.
    #[derive(Debug, Default, serde::Deserialize)]
    struct Jobs {
        batch_size: u32,
    }
    let message = error_with(
        |jail| {
            complete_env(jail);
            jail.create_file("pgwi.toml", "[default.databse]\nhost = \"h\"\n")?;
            Ok(())
        },
        cronjob(),
    );
    assert!(
        message.contains("databse") && message.contains("known sections"),
        "{message}"
    );
    assert!(message.contains("pgwi.toml"), "{message}");

    Jail::expect_with(|jail| {
        complete_env(jail);
        jail.create_file("pgwi.toml", "[default.jobs]\nbatch_size = 50\n")?;
        let sources = ConfigSources {
            app_sections: vec!["jobs".into()],
            ..cronjob()
        };
        let loaded = load(&sources)?;
        let jobs: Jobs = loaded.section("jobs").map_err(|e| e.to_string())?;
        assert_eq!(jobs.batch_size, 50);
        let absent: Jobs = load(&cronjob())
            .map(|l| l.section("jobs").expect("absent section: defaults"))
            .unwrap_or_default();
        assert_eq!(absent.batch_size, 0);
        Ok(())
    });
}

#[test]
fn a_loaded_configuration_changed_afterwards_is_checked_again_at_connect() {
    // Scenario: load checks a configuration once; one changed after loading (max_connections = 0) is checked
    // again by connect, which refuses it naming the key; a configuration built in code without a user is
    // told to set the key, not a variable of the pgwi binary.
    Jail::expect_with(|jail| {
        jail.create_file("pgwi.toml", FILE)?;
        let mut config = load(&cronjob())?.config;
        config.database.max_connections = 0;
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let error = runtime
            .block_on(pgwi_core::connect_with(
                &config,
                crate::support::static_password("pw"),
            ))
            .expect_err("refused")
            .to_string();
        assert!(error.contains("database.max_connections"), "{error}");

        let mut in_code = pgwi_core::Config::for_server("db.example.com", 5432, "app", "x");
        in_code.database.user = None;
        let error = runtime
            .block_on(pgwi_core::connect_with(
                &in_code,
                crate::support::static_password("pw"),
            ))
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("database.user") && !error.contains("DBUSER"),
            "{error}"
        );
        Ok(())
    });
}
