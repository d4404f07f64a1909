//! The configuration examples in the docs are pgwi configuration, not prose: every TOML block in README.md
//! and docs/*.md loads, in each profile it defines, with the same loader and sections as the `pgwi` binary.

use std::path::{Path, PathBuf};

use pgwi::bootstrap::AdminConfig;
use pgwi::proxy::ProxyConfig;
use pgwi_core::config::{ConfigSources, load_unchecked};
use pgwi_credentials::SourceRegistry;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The ```toml blocks of a Markdown file.
fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The profiles a pgwi.toml defines: the first segment of each table header (`[local.database]` → local).
fn profiles(toml: &str) -> Vec<String> {
    let mut profiles: Vec<String> = toml
        .lines()
        .filter_map(|line| line.trim().strip_prefix('['))
        .filter_map(|header| header.split(['.', ']']).next())
        .map(|profile| profile.trim().to_owned())
        .collect();
    profiles.sort();
    profiles.dedup();
    profiles
}

#[test]
fn every_toml_example_in_the_docs_is_valid_configuration() {
    // Scenario: a reader copies a TOML block from README.md or docs/ into pgwi.toml; in each of its profiles
    // it must load with no unknown key or section, name a kind this build has, and its `proxy` and `admin`
    // tables must be what `pgwi proxy` and `pgwi admin bootstrap` read.
    let mut docs = vec![workspace().join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(workspace().join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    docs.extend(pages);
    let kinds = SourceRegistry::default().kinds();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for doc in &docs {
        let markdown = std::fs::read_to_string(doc).expect("read doc");
        for (index, block) in toml_blocks(&markdown).into_iter().enumerate() {
            let place = format!("{} (TOML block {})", doc.display(), index + 1);
            let profiles = profiles(&block);
            assert!(!profiles.is_empty(), "{place} has no [profile.…] table");
            let file = dir.path().join("pgwi.toml");
            std::fs::write(&file, &block).expect("write example");
            for profile in &profiles {
                let loaded = load_unchecked(&ConfigSources {
                    file: Some(file.clone()),
                    profile: Some(profile.clone()),
                    demo_variables: true,
                    app_sections: vec!["admin".into(), "proxy".into()],
                    ..ConfigSources::default()
                })
                .unwrap_or_else(|e| panic!("{place}, profile {profile}: {e}"));
                let kind = &loaded.config.credential.kind;
                assert!(
                    kinds.contains(kind),
                    "{place}, profile {profile}: credential.kind {kind:?} is not one of {kinds:?}"
                );
                for kind in loaded.config.credential.chain.iter().flatten() {
                    assert!(
                        kinds.contains(kind),
                        "{place}, profile {profile}: credential.chain names {kind:?}, not one of {kinds:?}"
                    );
                }
                loaded
                    .section::<ProxyConfig>("proxy")
                    .unwrap_or_else(|e| panic!("{place}, profile {profile}: {e}"));
                loaded
                    .section::<AdminConfig>("admin")
                    .unwrap_or_else(|e| panic!("{place}, profile {profile}: {e}"));
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 4,
        "only {checked} profiles found in the docs' TOML blocks: is the block syntax still ```toml?"
    );
}
