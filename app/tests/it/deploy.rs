//! The Terraform stack and the rendered Kubernetes manifests agree on every value that must match for
//! workload identity and the database login to work. Each mismatch here is a failure users hit in the field
//! (AADSTS70021, missing AZURE_* variables, 28P01).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hcl::eval::{Context, Evaluate as _};
use hcl::{Block, Body, Expression, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every block of every `.tf` file in terraform/.
fn terraform_blocks() -> Vec<Block> {
    let mut blocks = Vec::new();
    for entry in std::fs::read_dir(repo().join("terraform")).expect("terraform/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "tf") {
            let body: Body = hcl::parse(&std::fs::read_to_string(&path).expect("read"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            blocks.extend(body.into_blocks());
        }
    }
    blocks
}

fn find<'a>(blocks: &'a [Block], kind: &str, labels: &[&str]) -> &'a Block {
    blocks
        .iter()
        .find(|b| {
            b.identifier() == kind
                && b.labels()
                    .iter()
                    .map(|l| l.as_str())
                    .eq(labels.iter().copied())
        })
        .unwrap_or_else(|| panic!("no {kind} {labels:?} in terraform/"))
}

fn attribute<'a>(block: &'a Block, key: &str) -> &'a Expression {
    block
        .body()
        .attributes()
        .find(|a| a.key() == key)
        .map(|a| a.expr())
        .unwrap_or_else(|| panic!("no {key} in {:?}", block.labels()))
}

/// An evaluation context with `var.*` bound to the variables' defaults.
fn defaults(blocks: &[Block]) -> Context<'static> {
    let vars: hcl::Map<String, Value> = blocks
        .iter()
        .filter(|b| b.identifier() == "variable")
        .filter_map(|b| {
            let default = b.body().attributes().find(|a| a.key() == "default")?;
            Some((
                b.labels()[0].as_str().to_owned(),
                default.expr().evaluate(&Context::new()).ok()?,
            ))
        })
        .collect();
    let mut ctx = Context::new();
    ctx.declare_var("var", Value::Object(vars));
    ctx
}

fn evaluate(expr: &Expression, ctx: &Context) -> Value {
    expr.evaluate(ctx)
        .unwrap_or_else(|e| panic!("cannot evaluate {expr}: {e}"))
}

/// `kubectl kustomize deploy/k8s` with the example values, as documents.
fn rendered() -> Vec<serde_norway::Value> {
    let dir = tempfile::tempdir().expect("dir");
    let k8s = dir.path().join("k8s");
    std::fs::create_dir(&k8s).expect("mkdir");
    for entry in std::fs::read_dir(repo().join("deploy/k8s")).expect("deploy/k8s") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, k8s.join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::copy(k8s.join("azure.env.example"), k8s.join("azure.env")).expect("example values");
    let output = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&k8s)
        .output()
        .expect("kubectl must be installed to render deploy/k8s (apt-get install kubectl, or see kubernetes.io)");
    assert!(
        output.status.success(),
        "kustomize failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_norway::Deserializer::from_slice(&output.stdout)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("YAML"))
        .collect()
}

fn object<'a>(docs: &'a [serde_norway::Value], kind: &str, name: &str) -> &'a serde_norway::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the rendered manifests"))
}

fn str_of(value: &serde_norway::Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

/// The env var `name` of the first container of `pod_spec`: a literal, or `configmap:KEY`.
fn env_of(pod_spec: &serde_norway::Value, name: &str) -> String {
    let env = pod_spec["containers"][0]["env"].as_sequence().expect("env");
    let var = env
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in env"));
    match var["value"].as_str() {
        Some(value) => value.to_owned(),
        None => format!(
            "configmap:{}",
            str_of(&var["valueFrom"]["configMapKeyRef"]["key"])
        ),
    }
}

/// The example values and the lines of render-values.sh, by key.
fn values() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let parse = |text: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    (
        parse(
            &std::fs::read_to_string(repo().join("deploy/k8s/azure.env.example")).expect("example"),
        ),
        parse(
            &std::fs::read_to_string(repo().join("deploy/render-values.sh"))
                .expect("render-values.sh"),
        ),
    )
}

#[test]
fn federated_credentials_match_the_service_accounts_that_use_them() {
    // Scenario: each federated credential's subject is system:serviceaccount:<namespace>:<serviceaccount> of
    // the pod that uses the identity, its audience is api://AzureADTokenExchange, and the pod carries the
    // workload-identity label (else AADSTS70021 or no AZURE_* variables).
    let blocks = terraform_blocks();
    let ctx = defaults(&blocks);
    let docs = rendered();
    for (credential, workload_kind, workload, spec_path) in [
        (
            "app",
            "CronJob",
            "pgwi",
            &["spec", "jobTemplate", "spec", "template"][..],
        ),
        ("admin", "Job", "pgwi-bootstrap", &["spec", "template"][..]),
    ] {
        let fic = find(
            &blocks,
            "resource",
            &["azurerm_federated_identity_credential", credential],
        );
        let workload_object = object(&docs, workload_kind, workload);
        let template = spec_path.iter().fold(workload_object, |v, key| &v[*key]);
        let namespace = str_of(&workload_object["metadata"]["namespace"]);
        let service_account = str_of(&template["spec"]["serviceAccountName"]);

        assert_eq!(
            evaluate(attribute(fic, "subject"), &ctx),
            Value::from(format!(
                "system:serviceaccount:{namespace}:{service_account}"
            )),
            "{credential}'s federated credential subject"
        );
        assert_eq!(
            evaluate(attribute(fic, "audience"), &ctx),
            Value::from(vec![Value::from("api://AzureADTokenExchange")])
        );
        assert_eq!(
            template["metadata"]["labels"]["azure.workload.identity/use"], "true",
            "{workload}'s pod label"
        );
        let sa = object(&docs, "ServiceAccount", service_account);
        assert_eq!(str_of(&sa["metadata"]["namespace"]), namespace);
        assert!(
            sa["metadata"]["annotations"]["azure.workload.identity/client-id"]
                .as_str()
                .is_some_and(|id| !id.contains("set-by")),
            "{service_account} lacks its client-id annotation"
        );
    }
    let namespace = object(&docs, "Namespace", "app");
    assert_eq!(
        Value::from(str_of(&namespace["metadata"]["name"])),
        evaluate(&"var.k8s_namespace".parse().expect("expr"), &ctx)
    );
}

#[test]
fn the_database_user_is_the_identity_name_and_the_database_matches() {
    // Scenario: the CronJob's DBUSER is the application identity's NAME (28P01 otherwise), its DBNAME is the
    // database Terraform names, the bootstrap creates that same role and database, and the server's Entra
    // administrator is the identity the bootstrap Job runs as.
    let blocks = terraform_blocks();
    let ctx = defaults(&blocks);
    let docs = rendered();
    let (example, rendered_values) = values();
    let cronjob =
        &object(&docs, "CronJob", "pgwi")["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let bootstrap = &object(&docs, "Job", "pgwi-bootstrap")["spec"]["template"]["spec"];

    assert_eq!(env_of(cronjob, "DBUSER"), "configmap:DBUSER");
    assert_eq!(env_of(cronjob, "DBNAME"), "configmap:DBNAME");
    assert_eq!(
        env_of(bootstrap, "PGWI_ADMIN__IDENTITY_NAME"),
        "configmap:DBUSER"
    );
    assert_eq!(
        env_of(bootstrap, "PGWI_ADMIN__APP_DATABASE"),
        "configmap:DBNAME"
    );
    assert_eq!(env_of(bootstrap, "DBUSER"), "configmap:ADMIN_IDENTITY_NAME");
    assert_eq!(rendered_values["DBUSER"], "$(out app_identity_name)");
    assert_eq!(rendered_values["DBNAME"], "$(out postgres_database)");
    assert_eq!(
        rendered_values["ADMIN_IDENTITY_NAME"],
        "$(out admin_identity_name)"
    );

    let output = |name: &str| attribute(find(&blocks, "output", &[name]), "value").to_string();
    assert_eq!(
        output("app_identity_name"),
        "azurerm_user_assigned_identity.app.name"
    );
    assert_eq!(
        output("admin_identity_name"),
        "azurerm_user_assigned_identity.admin.name"
    );
    assert_eq!(output("postgres_database"), "var.postgres_database");
    let app_identity = evaluate(
        attribute(
            find(
                &blocks,
                "resource",
                &["azurerm_user_assigned_identity", "app"],
            ),
            "name",
        ),
        &ctx,
    );
    let admin_identity = evaluate(
        attribute(
            find(
                &blocks,
                "resource",
                &["azurerm_user_assigned_identity", "admin"],
            ),
            "name",
        ),
        &ctx,
    );
    assert_eq!(
        app_identity,
        Value::from(example["DBUSER"].as_str()),
        "the example's DBUSER is the default identity name"
    );
    assert_eq!(
        admin_identity,
        Value::from(example["ADMIN_IDENTITY_NAME"].as_str())
    );
    assert_eq!(
        evaluate(&"var.postgres_database".parse().expect("expr"), &ctx),
        Value::from(example["DBNAME"].as_str())
    );

    let entra_admin = find(
        &blocks,
        "resource",
        &[
            "azurerm_postgresql_flexible_server_active_directory_administrator",
            "admin",
        ],
    );
    assert_eq!(
        attribute(entra_admin, "principal_name").to_string(),
        "azurerm_user_assigned_identity.admin.name"
    );
    assert_eq!(
        attribute(entra_admin, "object_id").to_string(),
        "azurerm_user_assigned_identity.admin.principal_id"
    );
    assert_eq!(
        evaluate(attribute(entra_admin, "principal_type"), &ctx),
        Value::from("ServicePrincipal")
    );
    let server = find(
        &blocks,
        "resource",
        &["azurerm_postgresql_flexible_server", "main"],
    );
    let auth = server
        .body()
        .blocks()
        .find(|b| b.identifier() == "authentication")
        .expect("authentication block");
    assert_eq!(
        evaluate(attribute(auth, "active_directory_auth_enabled"), &ctx),
        Value::from(true)
    );
    assert_eq!(
        evaluate(attribute(auth, "password_auth_enabled"), &ctx),
        Value::from(false)
    );
}
