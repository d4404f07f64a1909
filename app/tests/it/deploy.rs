//! The Terraform stack and the rendered Kubernetes manifests agree on every value that must match for
//! workload identity and the database login to work, for Terraform's defaults and for other values of its
//! variables. Each mismatch here is a failure users hit in the field (AADSTS70021, missing AZURE_* variables,
//! 28P01). The manifests are rendered with `kubectl kustomize` from deploy/k8s, with the values
//! deploy/render-values.sh would write.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::eval::{Context, Evaluate as _, FuncArgs, FuncDef, ParamType};
use hcl::{Block, Body, Expression, Value};
use serde_norway::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
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

fn resource<'a>(blocks: &'a [Block], kind: &str, name: &str) -> &'a Block {
    find(blocks, "resource", &[kind, name])
}

fn attribute<'a>(block: &'a Block, key: &str) -> &'a Expression {
    block
        .body()
        .attributes()
        .find(|a| a.key() == key)
        .map(|a| a.expr())
        .unwrap_or_else(|| panic!("no {key} in {:?}", block.labels()))
}

/// An attribute's expression as written, e.g. `azurerm_user_assigned_identity.app.name`.
fn source(block: &Block, key: &str) -> String {
    attribute(block, key).to_string()
}

/// The value of `output "name"`, as written.
fn output(blocks: &[Block], name: &str) -> String {
    source(find(blocks, "output", &[name]), "value")
}

/// Terraform's `cidrsubnet` for IPv4, enough to evaluate the subnets.
fn cidrsubnet(args: FuncArgs) -> Result<Value, String> {
    let (prefix, newbits, netnum) = (&args[0], &args[1], &args[2]);
    let (address, bits) = prefix
        .as_str()
        .and_then(|p| p.split_once('/'))
        .ok_or("not a CIDR")?;
    let address: std::net::Ipv4Addr = address.parse().map_err(|e| format!("{e}"))?;
    let bits: u32 = bits.parse().map_err(|e| format!("{e}"))?;
    let newbits = newbits.as_u64().ok_or("newbits")? as u32;
    let netnum = netnum.as_u64().ok_or("netnum")? as u32;
    let length = bits + newbits;
    let network = u32::from(address) | (netnum << (32 - length));
    Ok(Value::from(format!(
        "{}/{length}",
        std::net::Ipv4Addr::from(network)
    )))
}

/// An evaluation context with `var.*` bound to the variables' defaults, with `overrides` in their place.
fn context(blocks: &[Block], overrides: &[(&str, &str)]) -> Context<'static> {
    let mut vars: hcl::Map<String, Value> = blocks
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
    for (name, value) in overrides {
        assert!(
            vars.contains_key(*name),
            "no variable {name} with a default"
        );
        vars.insert((*name).to_owned(), Value::from(*value));
    }
    let mut ctx = Context::new();
    ctx.declare_var("var", Value::Object(vars));
    ctx.declare_func(
        "cidrsubnet",
        FuncDef::new(
            cidrsubnet,
            [ParamType::String, ParamType::Number, ParamType::Number],
        ),
    );
    ctx
}

fn evaluate(expr: &Expression, ctx: &Context) -> Value {
    expr.evaluate(ctx)
        .unwrap_or_else(|e| panic!("cannot evaluate {expr}: {e}"))
}

fn var(name: &str, ctx: &Context) -> Value {
    evaluate(&format!("var.{name}").parse().expect("expr"), ctx)
}

/// `KEY=value` lines.
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The example values (deploy/k8s/values/azure.env.example).
fn example() -> BTreeMap<String, String> {
    env_file(&read("deploy/k8s/values/azure.env.example"))
}

/// render-values.sh's table: azure.env key → the `terraform output` it is written from.
fn mapping() -> BTreeMap<String, String> {
    let script = read("deploy/render-values.sh");
    let table = script
        .split_once("mapping=(\n")
        .and_then(|(_, rest)| rest.split_once("\n)"))
        .expect("a mapping=( ... ) table in render-values.sh")
        .0;
    table
        .lines()
        .map(|l| {
            let (key, name) = l.trim().split_once('=').expect("KEY=output");
            (key.to_owned(), name.to_owned())
        })
        .collect()
}

/// The values render-values.sh would write for a stack applied with `ctx`'s variables: each output that
/// depends on variables alone is evaluated; the others (ids, host names Azure assigns) are the example's.
fn values_for(blocks: &[Block], ctx: &Context) -> BTreeMap<String, String> {
    let mut values = example();
    for (key, name) in mapping() {
        let expr = attribute(find(blocks, "output", &[&name]), "value");
        if let Ok(Value::String(value)) = expr.evaluate(ctx) {
            values.insert(key, value);
        }
    }
    values
}

/// `kubectl kustomize deploy/k8s/<kustomization>` with `values` as azure.env, as documents.
fn render(kustomization: &str, values: &BTreeMap<String, String>) -> Vec<Yaml> {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let path = entry.expect("entry").path();
            let target = to.join(path.file_name().expect("name"));
            if path.is_dir() {
                copy(&path, &target);
            } else if path.file_name().is_some_and(|n| n != "azure.env") {
                std::fs::copy(&path, &target).expect("copy");
            }
        }
    }
    let dir = tempfile::tempdir().expect("dir");
    let k8s = dir.path().join("k8s");
    copy(&repo().join("deploy/k8s"), &k8s);
    let env: String = values.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(k8s.join("values/azure.env"), env).expect("azure.env");
    let output = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(k8s.join(kustomization))
        .output()
        .expect("kubectl must be installed to render deploy/k8s (apt-get install kubectl, or see kubernetes.io)");
    assert!(
        output.status.success(),
        "kustomize {kustomization} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(
        !text.contains("set-by-kustomize"),
        "{kustomization}: a placeholder was not replaced:\n{text}"
    );
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("YAML"))
        .collect()
}

fn object<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the rendered manifests"))
}

fn kinds(docs: &[Yaml]) -> Vec<&str> {
    docs.iter().map(|d| str_of(&d["kind"])).collect()
}

fn str_of(value: &Yaml) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

/// The pod template of a CronJob or a Job.
fn pod_template(workload: &Yaml) -> &Yaml {
    match str_of(&workload["kind"]) {
        "CronJob" => &workload["spec"]["jobTemplate"]["spec"]["template"],
        "Job" => &workload["spec"]["template"],
        other => panic!("not a workload: {other}"),
    }
}

/// The env var `name` of the first container of `pod_spec`: a literal, or `configmap:KEY`.
fn env_of(pod_spec: &Yaml, name: &str) -> String {
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

/// Non-default namespaces and ServiceAccounts: what the manifests must follow as well as the defaults.
const OTHER_NAMES: [(&str, &str); 4] = [
    ("k8s_namespace", "team-app"),
    ("k8s_service_account", "writer"),
    ("k8s_admin_namespace", "team-dba"),
    ("k8s_admin_service_account", "dba"),
];

#[test]
fn federated_credentials_match_the_service_accounts_that_use_them() {
    // Scenario: for Terraform's defaults and for other namespaces and ServiceAccounts, each federated
    // credential's issuer is the cluster's OIDC issuer, its subject is system:serviceaccount:<ns>:<sa> of the
    // pods that use the identity, its audience is api://AzureADTokenExchange, the ServiceAccount carries that
    // identity's client id, and the pods carry the workload-identity label (else AADSTS70021 or no AZURE_*
    // variables). Every object lands in its kustomization's namespace.
    let blocks = terraform_blocks();
    let cluster = resource(&blocks, "azurerm_kubernetes_cluster", "main");
    for (setting, expected) in [
        ("oidc_issuer_enabled", true),
        ("workload_identity_enabled", true),
    ] {
        assert_eq!(
            evaluate(attribute(cluster, setting), &Context::new()),
            Value::from(expected),
            "the cluster's {setting}"
        );
    }
    assert_eq!(
        output(&blocks, "oidc_issuer_url"),
        "azurerm_kubernetes_cluster.main.oidc_issuer_url"
    );
    let values = mapping();

    for overrides in [&[][..], &OTHER_NAMES[..]] {
        let ctx = context(&blocks, overrides);
        let env = values_for(&blocks, &ctx);
        let app = render("app", &env);
        let bootstrap = render("bootstrap", &env);
        let doctor = render("doctor", &env);
        for (credential, docs, sa_docs, kind, workload, namespace_key) in [
            ("app", &app, &app, "CronJob", "pgwi", "APP_NAMESPACE"),
            ("app", &doctor, &app, "Job", "pgwi-doctor", "APP_NAMESPACE"),
            (
                "admin",
                &bootstrap,
                &bootstrap,
                "Job",
                "pgwi-bootstrap",
                "ADMIN_NAMESPACE",
            ),
        ] {
            let what = format!("{workload} with {overrides:?}");
            let fic = resource(&blocks, "azurerm_federated_identity_credential", credential);
            let workload_object = object(docs, kind, workload);
            let template = pod_template(workload_object);
            let namespace = str_of(&workload_object["metadata"]["namespace"]);
            let service_account = str_of(&template["spec"]["serviceAccountName"]);

            assert_eq!(
                evaluate(attribute(fic, "subject"), &ctx),
                Value::from(format!(
                    "system:serviceaccount:{namespace}:{service_account}"
                )),
                "{credential}'s federated credential subject, {what}"
            );
            assert_eq!(
                source(fic, "issuer"),
                "azurerm_kubernetes_cluster.main.oidc_issuer_url",
                "{credential}'s federated credential issuer"
            );
            assert_eq!(
                evaluate(attribute(fic, "audience"), &ctx),
                Value::from(vec![Value::from("api://AzureADTokenExchange")])
            );
            assert_eq!(
                source(fic, "user_assigned_identity_id"),
                format!("azurerm_user_assigned_identity.{credential}.id")
            );
            assert_eq!(
                template["metadata"]["labels"]["azure.workload.identity/use"], "true",
                "{what}: pod label"
            );
            assert_eq!(env[namespace_key], namespace, "{what}: namespace");

            let sa = object(sa_docs, "ServiceAccount", service_account);
            assert_eq!(str_of(&sa["metadata"]["namespace"]), namespace);
            let client_id_key = format!("{}_CLIENT_ID", credential.to_ascii_uppercase());
            assert_eq!(
                str_of(&sa["metadata"]["annotations"]["azure.workload.identity/client-id"]),
                env[&client_id_key],
                "{what}: {service_account}'s client-id annotation"
            );
            assert_eq!(
                output(&blocks, &values[&client_id_key]),
                format!("azurerm_user_assigned_identity.{credential}.client_id"),
                "{client_id_key} is the client id of the identity {credential}'s credential federates"
            );
            for doc in docs.iter() {
                if doc["kind"] == "Namespace" {
                    assert_eq!(str_of(&doc["metadata"]["name"]), namespace, "{what}");
                } else {
                    assert_eq!(
                        str_of(&doc["metadata"]["namespace"]),
                        namespace,
                        "{what}: {}/{} is in another namespace",
                        str_of(&doc["kind"]),
                        str_of(&doc["metadata"]["name"])
                    );
                }
            }
        }
        object(&app, "Namespace", &env["APP_NAMESPACE"]);
        object(&bootstrap, "Namespace", &env["ADMIN_NAMESPACE"]);
        assert_ne!(
            var("k8s_namespace", &ctx),
            var("k8s_admin_namespace", &ctx),
            "the administrator's ServiceAccount needs a namespace of its own"
        );
    }
    // Terraform refuses one namespace for both.
    let admin_fic = resource(&blocks, "azurerm_federated_identity_credential", "admin");
    let lifecycle = admin_fic
        .body()
        .blocks()
        .find(|b| b.identifier() == "lifecycle")
        .expect("the admin credential's lifecycle block");
    let precondition = lifecycle
        .body()
        .blocks()
        .find(|b| b.identifier() == "precondition")
        .expect("a precondition");
    assert_eq!(
        source(precondition, "condition"),
        "var.k8s_admin_namespace != var.k8s_namespace"
    );
}

#[test]
fn render_values_writes_every_key_from_an_output_terraform_has() {
    // Scenario: azure.env's keys are exactly IMAGE and render-values.sh's table; each output it reads (and
    // each the Taskfile reads) exists in terraform/; the names come from the variables the federated
    // credentials use; the example pins the image by digest.
    let blocks = terraform_blocks();
    let values = mapping();
    let example = example();
    let keys: BTreeSet<&str> = example.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = values.keys().map(String::as_str).chain(["IMAGE"]).collect();
    assert_eq!(keys, expected, "azure.env.example's keys");

    let taskfile = read("Taskfile.yml");
    let from_tasks = taskfile
        .split("tf-output.sh ")
        .skip(1)
        .map(|rest| rest.split_whitespace().next().expect("an output name"));
    for name in values.values().map(String::as_str).chain(from_tasks) {
        find(&blocks, "output", &[name]);
    }
    for (key, name, expr) in [
        ("APP_NAMESPACE", "k8s_namespace", "var.k8s_namespace"),
        (
            "APP_SERVICE_ACCOUNT",
            "k8s_service_account",
            "var.k8s_service_account",
        ),
        (
            "ADMIN_NAMESPACE",
            "k8s_admin_namespace",
            "var.k8s_admin_namespace",
        ),
        (
            "ADMIN_SERVICE_ACCOUNT",
            "k8s_admin_service_account",
            "var.k8s_admin_service_account",
        ),
        (
            "POSTGRES_SUBNET_CIDR",
            "postgres_subnet_cidr",
            "one(azurerm_subnet.postgres.address_prefixes)",
        ),
    ] {
        assert_eq!(values[key], name, "{key}");
        assert_eq!(output(&blocks, name), expr, "output {name}");
    }
    let defaults = context(&blocks, &[]);
    for (key, value) in values_for(&blocks, &defaults) {
        assert_eq!(value, example[&key], "the example's {key} is the default");
    }
    let image = &example["IMAGE"];
    let (_, digest) = image
        .split_once("@sha256:")
        .expect("IMAGE pinned by digest");
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "{image}"
    );
}

#[test]
fn the_database_user_is_the_identity_name_and_the_database_matches() {
    // Scenario: the CronJob's DBUSER is the application identity's NAME (28P01 otherwise), its DBNAME is the
    // database Terraform names, the bootstrap creates that same role and database, and the server's Entra
    // administrator is the identity the bootstrap Job runs as.
    let blocks = terraform_blocks();
    let ctx = context(&blocks, &[]);
    let example = example();
    let values = mapping();
    let app = render("app", &example);
    let bootstrap = render("bootstrap", &example);
    let cronjob = &pod_template(object(&app, "CronJob", "pgwi"))["spec"];
    let bootstrap = &pod_template(object(&bootstrap, "Job", "pgwi-bootstrap"))["spec"];

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
    assert_eq!(
        env_of(bootstrap, "PGWI_ADMIN__OBJECT_ID"),
        "configmap:APP_OBJECT_ID"
    );
    assert_eq!(env_of(bootstrap, "DBUSER"), "configmap:ADMIN_IDENTITY_NAME");
    assert_eq!(values["DBUSER"], "app_identity_name");
    assert_eq!(values["DBNAME"], "postgres_database");
    assert_eq!(values["ADMIN_IDENTITY_NAME"], "admin_identity_name");
    assert_eq!(values["APP_OBJECT_ID"], "app_object_id");

    assert_eq!(
        output(&blocks, "app_identity_name"),
        "azurerm_user_assigned_identity.app.name"
    );
    assert_eq!(
        output(&blocks, "app_object_id"),
        "azurerm_user_assigned_identity.app.principal_id"
    );
    assert_eq!(
        output(&blocks, "admin_identity_name"),
        "azurerm_user_assigned_identity.admin.name"
    );
    assert_eq!(
        output(&blocks, "postgres_database"),
        "var.postgres_database"
    );
    let identity_name = |name: &str| {
        evaluate(
            attribute(
                resource(&blocks, "azurerm_user_assigned_identity", name),
                "name",
            ),
            &ctx,
        )
    };
    assert_eq!(
        identity_name("app"),
        Value::from(example["DBUSER"].as_str()),
        "the example's DBUSER is the default identity name"
    );
    assert_eq!(
        identity_name("admin"),
        Value::from(example["ADMIN_IDENTITY_NAME"].as_str())
    );
    assert_eq!(
        var("postgres_database", &ctx),
        Value::from(example["DBNAME"].as_str())
    );

    let entra_admin = resource(
        &blocks,
        "azurerm_postgresql_flexible_server_active_directory_administrator",
        "admin",
    );
    assert_eq!(
        source(entra_admin, "principal_name"),
        "azurerm_user_assigned_identity.admin.name"
    );
    assert_eq!(
        source(entra_admin, "object_id"),
        "azurerm_user_assigned_identity.admin.principal_id"
    );
    assert_eq!(
        evaluate(attribute(entra_admin, "principal_type"), &ctx),
        Value::from("ServicePrincipal")
    );
    let server = resource(&blocks, "azurerm_postgresql_flexible_server", "main");
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

#[test]
fn jobs_live_in_their_own_kustomizations_and_only_db_bootstrap_applies_the_bootstrap() {
    // Scenario: `task deploy` applies deploy/k8s/app on every new image; a Job there could not be updated
    // (its template is immutable), so app has none. The bootstrap Job is applied by `task db:bootstrap`
    // alone, the doctor Job by `task doctor`; each deletes the previous run first (deploy/run-job.sh).
    let example = example();
    assert!(
        !kinds(&render("app", &example)).contains(&"Job"),
        "deploy/k8s/app renders a Job"
    );
    object(&render("bootstrap", &example), "Job", "pgwi-bootstrap");
    object(&render("doctor", &example), "Job", "pgwi-doctor");

    let taskfile: Yaml = serde_norway::from_str(&read("Taskfile.yml")).expect("Taskfile.yml");
    let tasks = taskfile["tasks"].as_mapping().expect("tasks");
    let commands = |task: &Yaml| serde_norway::to_string(&task["cmds"]).expect("cmds");
    for (name, task) in tasks {
        let name = str_of(name);
        let cmds = commands(task);
        assert_eq!(
            cmds.contains("deploy/k8s/bootstrap"),
            name == "db:bootstrap",
            "task {name}: only db:bootstrap applies deploy/k8s/bootstrap"
        );
        assert_eq!(
            cmds.contains("deploy/k8s/doctor"),
            name == "doctor",
            "task {name}: only doctor applies deploy/k8s/doctor"
        );
    }
    assert!(commands(&taskfile["tasks"]["deploy"]).contains("kubectl apply -k deploy/k8s/app"));
    for name in ["db:bootstrap", "doctor"] {
        assert!(
            commands(&taskfile["tasks"][name]).contains("bash deploy/run-job.sh"),
            "task {name} runs its Job through run-job.sh"
        );
    }
    // The CronJob's runs need the role and database the bootstrap creates: docs/aks.md bootstraps first.
    let docs = read("docs/aks.md");
    let at = |step: &str| {
        docs.find(&format!("\ntask {step} "))
            .or_else(|| docs.find(&format!("\ntask {step}\n")))
            .unwrap_or_else(|| panic!("docs/aks.md does not run task {step}"))
    };
    assert!(
        at("db:bootstrap") < at("deploy"),
        "docs/aks.md deploys the CronJob before task db:bootstrap"
    );
    let run_job = read("deploy/run-job.sh");
    let delete = run_job
        .find("delete job")
        .expect("run-job.sh deletes the Job");
    let apply = run_job.find("apply -k").expect("run-job.sh applies");
    assert!(delete < apply, "run-job.sh deletes the previous run first");
    assert!(
        read(".gitignore").lines().any(|l| l == "terraform/tfplan"),
        "tf:plan's saved plan is not ignored"
    );
}

#[test]
fn the_doctor_runs_as_the_cronjob_runs() {
    // Scenario: `task doctor` checks what the CronJob depends on, so its pod is the CronJob's pod with
    // `doctor` for `run` (and its own name label).
    let example = example();
    let app = render("app", &example);
    let doctor = render("doctor", &example);
    let mut cronjob = pod_template(object(&app, "CronJob", "pgwi")).clone();
    let mut job = pod_template(object(&doctor, "Job", "pgwi-doctor")).clone();
    assert_eq!(job["spec"]["containers"][0]["args"][0], "doctor");
    assert_eq!(cronjob["spec"]["containers"][0]["args"][0], "run");
    for template in [&mut cronjob, &mut job] {
        template["spec"]["containers"][0]["args"] = Yaml::Null;
        template["metadata"]["labels"]["app.kubernetes.io/name"] = Yaml::Null;
    }
    assert_eq!(job, cronjob, "the doctor's pod differs from the CronJob's");
    let cronjob = object(&app, "CronJob", "pgwi");
    let deadline = cronjob["spec"]["startingDeadlineSeconds"]
        .as_u64()
        .expect("the CronJob's startingDeadlineSeconds");
    assert_eq!(cronjob["spec"]["schedule"], "*/5 * * * *");
    assert!(
        deadline > 0 && deadline < 300,
        "startingDeadlineSeconds {deadline} within the five-minute schedule"
    );
}

/// The namespace NetworkPolicy's pod selector: pgwi's own pods.
fn pgwi_pods() -> Yaml {
    serde_norway::from_str("matchLabels: {app.kubernetes.io/part-of: pgwi}").expect("selector")
}

/// Whether a `matchLabels` pod selector selects a pod with `labels`.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    assert!(
        selector["matchExpressions"].is_null(),
        "only matchLabels selectors here"
    );
    let wanted = selector["matchLabels"]
        .as_mapping()
        .expect("a matchLabels selector");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| &labels[str_of(k)] == v)
}

/// A policy's egress: DNS only to kube-dns, 5432 only to the server's delegated subnet (Terraform's), 443
/// only to public addresses (not the node's metadata endpoint), every rule naming its destinations.
fn egress_names_its_destinations(policy: &Yaml, example: &BTreeMap<String, String>) {
    let name = str_of(&policy["metadata"]["name"]);
    let types = policy["spec"]["policyTypes"]
        .as_sequence()
        .expect("policyTypes");
    assert!(types.iter().any(|t| t == "Egress"), "{name}: no Egress");
    let rules = policy["spec"]["egress"].as_sequence().expect("egress");
    let rule = |port: u64| {
        rules
            .iter()
            .find(|r| {
                r["ports"]
                    .as_sequence()
                    .is_some_and(|ps| ps.iter().any(|p| p["port"] == port))
            })
            .unwrap_or_else(|| panic!("{name}: no egress rule for port {port}"))
    };
    for rule in rules {
        let to = rule["to"]
            .as_sequence()
            .expect("every egress rule names its destinations");
        assert!(!to.is_empty(), "{name}");
    }
    let dns = &rule(53)["to"][0];
    assert_eq!(
        dns["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "kube-system"
    );
    assert_eq!(dns["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
    assert_eq!(
        rule(5432)["to"][0]["ipBlock"]["cidr"],
        example["POSTGRES_SUBNET_CIDR"].as_str(),
        "{name}"
    );
    let https = &rule(443)["to"][0]["ipBlock"];
    assert_eq!(https["cidr"], "0.0.0.0/0");
    let except: Vec<&str> = https["except"]
        .as_sequence()
        .expect("except")
        .iter()
        .map(str_of)
        .collect();
    for range in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
    ] {
        assert!(except.contains(&range), "{name}: 443 excludes {range}");
    }
}

#[test]
fn namespaces_enforce_restricted_pods_and_egress_names_its_destinations() {
    // Scenario: both namespaces enforce the restricted Pod Security Standard and every pod meets it; the
    // NetworkPolicy selects pgwi's own pods by label (every pgwi pod carries it), takes no connections to
    // them, and allows DNS only to kube-dns, 5432 only to the server's delegated subnet (Terraform's),
    // and 443 only to public addresses (not the node's metadata endpoint).
    let blocks = terraform_blocks();
    let ctx = context(&blocks, &[]);
    let example = example();
    for kustomization in ["app", "bootstrap", "doctor"] {
        let docs = render(kustomization, &example);
        for doc in &docs {
            match str_of(&doc["kind"]) {
                "Namespace" => {
                    let labels = &doc["metadata"]["labels"];
                    assert_eq!(
                        labels["pod-security.kubernetes.io/enforce"], "restricted",
                        "{kustomization}"
                    );
                    assert_eq!(
                        labels["pod-security.kubernetes.io/enforce-version"],
                        "latest"
                    );
                }
                "CronJob" | "Job" => {
                    let spec = &pod_template(doc)["spec"];
                    let what = format!("{kustomization}: {}", str_of(&doc["metadata"]["name"]));
                    assert!(
                        selects(&pgwi_pods(), &pod_template(doc)["metadata"]["labels"]),
                        "{what}: the namespace's NetworkPolicy does not select this pod"
                    );
                    assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{what}");
                    assert_eq!(
                        spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                        "{what}"
                    );
                    for field in ["hostNetwork", "hostPID", "hostIPC"] {
                        assert!(spec[field].is_null(), "{what}: {field}");
                    }
                    for volume in spec["volumes"].as_sequence().expect("volumes") {
                        assert!(
                            !volume["configMap"].is_null(),
                            "{what}: only configMap volumes (the webhook adds a projected one)"
                        );
                    }
                    for container in spec["containers"].as_sequence().expect("containers") {
                        let security = &container["securityContext"];
                        assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
                        assert_eq!(security["capabilities"]["drop"][0], "ALL", "{what}");
                        assert!(security["capabilities"]["add"].is_null(), "{what}");
                        assert!(container["ports"].is_null(), "{what}: no ports");
                    }
                }
                _ => {}
            }
        }
        if kustomization == "doctor" {
            continue; // runs in the application's namespace, under its NetworkPolicy
        }
        let policy = object(&docs, "NetworkPolicy", "pgwi");
        assert_eq!(
            policy["spec"]["podSelector"],
            pgwi_pods(),
            "{kustomization}: the NetworkPolicy selects pgwi's own pods, not every pod of the namespace"
        );
        assert_eq!(policy["spec"]["ingress"], Yaml::Sequence(vec![]));
        egress_names_its_destinations(policy, &example);
    }
    // POSTGRES_SUBNET_CIDR is the subnet the server is delegated.
    let subnet = resource(&blocks, "azurerm_subnet", "postgres");
    assert_eq!(
        evaluate(attribute(subnet, "address_prefixes"), &ctx),
        Value::from(vec![Value::from(example["POSTGRES_SUBNET_CIDR"].as_str())]),
        "the example's POSTGRES_SUBNET_CIDR is the default subnet"
    );
    assert_eq!(
        source(
            resource(&blocks, "azurerm_postgresql_flexible_server", "main"),
            "delegated_subnet_id"
        ),
        "azurerm_subnet.postgres.id"
    );
}

#[test]
fn the_server_is_changed_one_step_at_a_time_and_every_provider_is_used() {
    // Scenario: the Entra administrator and each server configuration depend on the one before, starting
    // at the server, so the first apply does not change a new server in parallel (ServerBusy,
    // AadAuthOperationCannotBePerformedWhenServerIsNotAccessible). Every required provider is used.
    let blocks = terraform_blocks();
    let children: Vec<&Block> = blocks
        .iter()
        .filter(|b| {
            b.identifier() == "resource"
                && b.labels()[0]
                    .as_str()
                    .starts_with("azurerm_postgresql_flexible_server_")
        })
        .collect();
    assert!(
        children.len() >= 3,
        "the administrator and two configurations"
    );
    let address = |b: &Block| format!("{}.{}", b.labels()[0].as_str(), b.labels()[1].as_str());
    let addresses: BTreeSet<String> = children.iter().map(|b| address(b)).collect();
    // Each child's predecessor: its one depends_on entry, the server or another child.
    let mut predecessors = BTreeMap::new();
    for child in &children {
        let Expression::Array(listed) = attribute(child, "depends_on") else {
            panic!("{}: depends_on is not a list", address(child));
        };
        assert_eq!(listed.len(), 1, "{}: depends on one step", address(child));
        let before = listed[0].to_string();
        assert!(
            before == "azurerm_postgresql_flexible_server.main" || addresses.contains(&before),
            "{} depends on {before}",
            address(child)
        );
        predecessors.insert(address(child), before);
    }
    // A chain: every step has at most one successor, and one step starts at the server.
    let mut successors = BTreeMap::new();
    for (child, before) in &predecessors {
        if let Some(other) = successors.insert(before.clone(), child.clone()) {
            panic!(
                "{child} and {other} both follow {before}: Terraform would make them in parallel"
            );
        }
    }
    assert!(successors.contains_key("azurerm_postgresql_flexible_server.main"));

    let terraform = blocks
        .iter()
        .find(|b| b.identifier() == "terraform")
        .expect("terraform block");
    let providers = terraform
        .body()
        .blocks()
        .find(|b| b.identifier() == "required_providers")
        .expect("required_providers");
    for provider in providers.body().attributes() {
        let prefix = format!("{}_", provider.key());
        assert!(
            blocks
                .iter()
                .any(|b| matches!(b.identifier(), "resource" | "data")
                    && b.labels()[0].as_str().starts_with(&prefix)),
            "provider {} is required but not used",
            provider.key()
        );
    }
}

/// The one nested block `ident` of `block`.
fn block_in<'a>(block: &'a Block, ident: &str) -> &'a Block {
    let mut found = block.body().blocks().filter(|b| b.identifier() == ident);
    let first = found
        .next()
        .unwrap_or_else(|| panic!("no {ident} block in {:?}", block.labels()));
    assert!(found.next().is_none(), "more than one {ident} block");
    first
}

#[test]
fn the_sidecar_example_brings_the_policy_its_application_needs() {
    // Scenario: the namespace's NetworkPolicy selects pgwi's own pods only, so it does not cut off an
    // application that runs pgwi proxy as its sidecar (probes pass, as kubelet traffic is exempt, and the pod
    // looks Ready while no Service reaches it). The example ships the application's own policy: its pods, every
    // port its application serves in, and the sidecar's destinations out.
    let example = example();
    let sidecar = render("proxy-sidecar", &example);
    let deployment = object(&sidecar, "Deployment", "orders");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(
        !selects(&pgwi_pods(), labels),
        "the namespace's NetworkPolicy selects the sidecar example's pods"
    );
    let policy = object(&sidecar, "NetworkPolicy", "orders");
    assert!(
        selects(&policy["spec"]["podSelector"], labels),
        "the example's NetworkPolicy does not select its pods"
    );
    let types = policy["spec"]["policyTypes"]
        .as_sequence()
        .expect("policyTypes");
    assert!(types.iter().any(|t| t == "Ingress"));
    let allowed: Vec<&Yaml> = policy["spec"]["ingress"]
        .as_sequence()
        .expect("ingress rules")
        .iter()
        .flat_map(|rule| rule["ports"].as_sequence().expect("ports").iter())
        .map(|p| &p["port"])
        .collect();
    let spec = &deployment["spec"]["template"]["spec"];
    let mut served = 0;
    for container in spec["containers"].as_sequence().expect("containers") {
        for port in container["ports"].as_sequence().into_iter().flatten() {
            served += 1;
            assert!(
                allowed.contains(&&port["name"]) || allowed.contains(&&port["containerPort"]),
                "the example's NetworkPolicy lets no one reach {}'s port {:?}",
                str_of(&container["name"]),
                port
            );
        }
    }
    assert!(served > 0, "the example's application serves no port");
    // The sidecar's /metrics: the scrape annotations name its health port, which the policy lets in.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(str_of(&annotations["prometheus.io/scrape"]), "true");
    assert_eq!(str_of(&annotations["prometheus.io/path"]), "/metrics");
    let sidecar_ports: Vec<String> = spec["initContainers"]
        .as_sequence()
        .expect("the pgwi sidecar")
        .iter()
        .flat_map(|c| c["ports"].as_sequence().into_iter().flatten())
        .filter(|p| p["name"] == "healthz")
        .map(|p| p["containerPort"].as_i64().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        sidecar_ports,
        vec![str_of(&annotations["prometheus.io/port"]).to_owned()],
        "the scrape port is not the sidecar's health port"
    );
    assert!(
        allowed.contains(&&Yaml::from("healthz")),
        "no ingress rule lets a scraper reach /metrics"
    );
    egress_names_its_destinations(policy, &example);
    for doc in &sidecar {
        assert_eq!(
            str_of(&doc["metadata"]["namespace"]),
            example["APP_NAMESPACE"]
        );
    }
}

/// Every `az` command in `text` (shell; a Taskfile command), from `az` to the end of its command.
fn az_calls(text: &str) -> Vec<String> {
    let joined = text.replace("\\\n", " ");
    let mut calls = Vec::new();
    for line in joined.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let mut at = 0;
        while let Some(found) = line[at..].find("az ") {
            let i = at + found;
            at = i + 3;
            let before = line[..i].trim_end();
            let command_position = before.is_empty()
                || [
                    "$(", "(", ";", "&&", "||", "|", "!", "then", "do", "if", "- ",
                ]
                .iter()
                .any(|p| before.ends_with(p.trim_end()));
            let word_start = i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric();
            if command_position && word_start {
                let rest = &line[i..];
                let end = [")", ";", " | ", "&&", "||"]
                    .iter()
                    .filter_map(|stop| rest.find(stop))
                    .min()
                    .unwrap_or(rest.len());
                calls.push(rest[..end].trim().to_owned());
            }
        }
    }
    calls
}

#[test]
fn every_az_call_names_the_stacks_subscription() {
    // Scenario: Terraform deploys into tfvars' subscription_id; az would use its own default, which may be
    // another (ResourceGroupNotFound). Terraform outputs the subscription, and every az call of the Taskfile
    // and of the deployment's scripts names it.
    let blocks = terraform_blocks();
    assert_eq!(
        output(&blocks, "subscription_id"),
        "data.azurerm_client_config.current.subscription_id"
    );
    let provider = find(&blocks, "provider", &["azurerm"]);
    assert_eq!(source(provider, "subscription_id"), "var.subscription_id");

    let mut seen = Vec::new();
    let taskfile: Yaml = serde_norway::from_str(&read("Taskfile.yml")).expect("Taskfile.yml");
    for (name, task) in taskfile["tasks"].as_mapping().expect("tasks") {
        let name = str_of(name);
        for cmd in task["cmds"].as_sequence().into_iter().flatten() {
            let Some(cmd) = cmd.as_str().or_else(|| cmd["cmd"].as_str()) else {
                continue;
            };
            for call in az_calls(cmd) {
                assert!(
                    call.contains(" --subscription {{.SUBSCRIPTION}} "),
                    "task {name}: `{call}` does not name the subscription"
                );
                assert_eq!(
                    task["vars"]["SUBSCRIPTION"]["sh"], "bash deploy/tf-output.sh subscription_id",
                    "task {name}: SUBSCRIPTION is not Terraform's"
                );
                seen.push(call);
            }
        }
    }
    let mut scripts = vec![PathBuf::from("deploy")];
    let mut files = Vec::new();
    while let Some(dir) = scripts.pop() {
        for entry in std::fs::read_dir(repo().join(&dir)).expect("read_dir") {
            let path = dir.join(entry.expect("entry").file_name());
            if repo().join(&path).is_dir() {
                scripts.push(path);
            } else if path.extension().is_some_and(|e| e == "sh") {
                files.push(path);
            }
        }
    }
    assert!(files.iter().any(|f| f.ends_with("render-values.sh")));
    for file in files {
        let text = read(file.to_str().expect("UTF-8 path"));
        for call in az_calls(&text) {
            let named = call
                .split_once(" --subscription ")
                .is_some_and(|(_, rest)| rest.starts_with("\"$") || rest.starts_with('$'));
            assert!(
                named,
                "{}: `{call}` does not name the subscription",
                file.display()
            );
            seen.push(call);
        }
    }
    for command in [
        "az aks get-credentials",
        "az acr login",
        "az acr build",
        "az acr repository show",
    ] {
        assert!(
            seen.iter().any(|c| c.starts_with(command)),
            "{command} not found among the az calls: {seen:?}"
        );
    }
}

#[test]
fn the_image_tag_follows_only_what_goes_into_the_image() {
    // Scenario: the tag changes with the image and only with it: image-tag.sh hashes the build context
    // deploy/Dockerfile copies (its COPY sources, what .dockerignore lets through) and the Dockerfile, so
    // editing the manifests' values (values/pgwi.toml, proxy-sidecar/app.env) as the docs say keeps the pushed
    // image deployable. (walk-docs.sh runs the script on edits of each kind.)
    let script = read("deploy/image-tag.sh");
    let inputs: BTreeSet<&str> = script
        .split_once("inputs=(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .expect("an inputs=( ... ) list in image-tag.sh")
        .0
        .split_whitespace()
        .collect();
    let dockerfile = read("deploy/Dockerfile");
    let mut copied = BTreeSet::new();
    for line in dockerfile.lines() {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        let words: Vec<&str> = args.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from=")) {
            continue;
        }
        for source in &words[..words.len() - 1] {
            // The runtime-prebuilt stage's binary is built from the same sources, outside the image.
            if *source != "target/release/pgwi" {
                copied.insert(source.trim_end_matches('/'));
            }
        }
    }
    let expected: BTreeSet<&str> = copied
        .iter()
        .copied()
        .chain(["deploy/Dockerfile", ".dockerignore"])
        .collect();
    assert_eq!(inputs, expected, "image-tag.sh's inputs");
    for allowed in read(".dockerignore")
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
    {
        let allowed = allowed.trim_end_matches('/');
        assert!(
            allowed == "target/release/pgwi" || inputs.contains(allowed),
            ".dockerignore lets {allowed} into the build context, image-tag.sh does not hash it"
        );
    }
    for edited in ["deploy/k8s", "docs", "terraform"] {
        assert!(
            !inputs.iter().any(|i| i.starts_with(edited)),
            "{edited} would change the tag"
        );
    }
    let taskfile: Yaml = serde_norway::from_str(&read("Taskfile.yml")).expect("Taskfile.yml");
    assert!(
        str_of(&taskfile["vars"]["TAG"]["sh"]).starts_with("bash deploy/image-tag.sh "),
        "the Taskfile's TAG is image-tag.sh's"
    );
}

#[test]
fn the_stack_uses_what_azure_supports_now() {
    // Scenario: Container Insights authenticates with the cluster's managed identity (legacy authentication
    // is retired) and reads a data collection rule associated with the cluster, sending to the stack's
    // workspace; Cilium is the data plane and enforces the NetworkPolicies (overlay, as it needs); the
    // federated credentials name their identity with user_assigned_identity_id, in a provider that has it.
    let blocks = terraform_blocks();
    let ctx = context(&blocks, &[]);
    let cluster = resource(&blocks, "azurerm_kubernetes_cluster", "main");
    let workspace = "azurerm_log_analytics_workspace.main.id";
    let oms = block_in(cluster, "oms_agent");
    assert_eq!(
        evaluate(attribute(oms, "msi_auth_for_monitoring_enabled"), &ctx),
        Value::from(true)
    );
    assert_eq!(source(oms, "log_analytics_workspace_id"), workspace);

    let rule = resource(
        &blocks,
        "azurerm_monitor_data_collection_rule",
        "container_insights",
    );
    let destination = block_in(block_in(rule, "destinations"), "log_analytics");
    assert_eq!(source(destination, "workspace_resource_id"), workspace);
    let flow = block_in(rule, "data_flow");
    assert_eq!(
        evaluate(attribute(flow, "destinations"), &ctx),
        Value::from(vec![evaluate(attribute(destination, "name"), &ctx)])
    );
    let extension = block_in(block_in(rule, "data_sources"), "extension");
    assert_eq!(
        evaluate(attribute(extension, "extension_name"), &ctx),
        Value::from("ContainerInsights")
    );
    assert_eq!(source(extension, "streams"), source(flow, "streams"));
    let streams = evaluate(
        &"local.container_insights_streams".parse().expect("expr"),
        &{
            let mut ctx = context(&blocks, &[]);
            let locals: hcl::Map<String, Value> = blocks
                .iter()
                .filter(|b| b.identifier() == "locals")
                .flat_map(|b| b.body().attributes())
                .filter_map(|a| Some((a.key().to_owned(), a.expr().evaluate(&ctx).ok()?)))
                .collect();
            ctx.declare_var("local", Value::Object(locals));
            ctx
        },
    );
    assert!(
        streams
            .as_array()
            .is_some_and(|s| s.contains(&Value::from("Microsoft-ContainerLogV2"))),
        "the containers' output (ContainerLogV2) is collected: {streams:?}"
    );
    let association = resource(
        &blocks,
        "azurerm_monitor_data_collection_rule_association",
        "container_insights",
    );
    assert_eq!(
        source(association, "target_resource_id"),
        "azurerm_kubernetes_cluster.main.id"
    );
    assert_eq!(
        source(association, "data_collection_rule_id"),
        "azurerm_monitor_data_collection_rule.container_insights.id"
    );

    let network = block_in(cluster, "network_profile");
    for (key, expected) in [
        ("network_plugin", "azure"),
        ("network_plugin_mode", "overlay"),
        ("network_data_plane", "cilium"),
        ("network_policy", "cilium"),
    ] {
        assert_eq!(
            evaluate(attribute(network, key), &ctx),
            Value::from(expected),
            "network_profile.{key}"
        );
    }

    for credential in blocks.iter().filter(|b| {
        b.identifier() == "resource"
            && b.labels()[0].as_str() == "azurerm_federated_identity_credential"
    }) {
        let keys: BTreeSet<&str> = credential.body().attributes().map(|a| a.key()).collect();
        assert!(
            keys.contains("user_assigned_identity_id"),
            "{:?}",
            credential.labels()
        );
        for deprecated in ["parent_id", "resource_group_name"] {
            assert!(
                !keys.contains(deprecated),
                "{:?} sets the deprecated {deprecated}",
                credential.labels()
            );
        }
    }
    let terraform = blocks
        .iter()
        .find(|b| b.identifier() == "terraform")
        .expect("terraform block");
    let azurerm = evaluate(
        attribute(block_in(terraform, "required_providers"), "azurerm"),
        &ctx,
    );
    let version = azurerm
        .as_object()
        .and_then(|o| o.get("version"))
        .and_then(Value::as_str)
        .expect("azurerm's version");
    let minor = version
        .strip_prefix("~> 4.")
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("azurerm {version}: expected ~> 4.N"));
    assert!(
        minor >= 65,
        "azurerm {version}: user_assigned_identity_id came in 4.65.0"
    );
}

#[test]
fn unsafe_or_incomplete_variables_are_refused_at_plan() {
    // Scenario: the stack's defaults refuse an API server open to the internet unless that is chosen on
    // purpose, a bastion without an SSH key is refused by our check (with the fix) before the provider's, and
    // the server's zone and geo-redundant backup follow variables for regions without zones or a pair.
    // (offline-checks.sh plans terraform/checks.tf with each case and reads the messages.)
    let blocks = terraform_blocks();
    let ctx = context(&blocks, &[]);
    assert_eq!(
        var("aks_api_authorized_ip_ranges", &ctx),
        Value::Array(vec![])
    );
    assert_eq!(var("aks_api_open_to_internet", &ctx), Value::from(false));
    let cluster = resource(&blocks, "azurerm_kubernetes_cluster", "main");
    assert_eq!(
        source(
            block_in(cluster, "api_server_access_profile"),
            "authorized_ip_ranges"
        ),
        "var.aks_api_authorized_ip_ranges"
    );
    let checks = resource(&blocks, "terraform_data", "input_checks");
    let conditions: Vec<String> = block_in(checks, "lifecycle")
        .body()
        .blocks()
        .filter(|b| b.identifier() == "precondition")
        .map(|b| source(b, "condition"))
        .collect();
    for needed in [
        &[
            "var.aks_api_authorized_ip_ranges",
            "var.aks_api_open_to_internet",
        ][..],
        &["var.enable_bastion", "var.bastion_ssh_public_key"][..],
    ] {
        assert!(
            conditions
                .iter()
                .any(|c| needed.iter().all(|v| c.contains(v))),
            "no precondition on {needed:?} in terraform/checks.tf: {conditions:?}"
        );
    }
    let server = resource(&blocks, "azurerm_postgresql_flexible_server", "main");
    assert_eq!(
        source(server, "geo_redundant_backup_enabled"),
        "var.postgres_geo_redundant_backup"
    );
    assert!(source(server, "zone").contains("var.postgres_zone"));
    assert_eq!(
        var("postgres_geo_redundant_backup", &ctx),
        Value::from(true)
    );
    assert_eq!(var("postgres_zone", &ctx), Value::from("1"));
    let docs = read("docs/aks.md");
    assert!(
        docs.contains("Cluster Admin") && docs.contains("propagate"),
        "docs/aks.md says a fresh Cluster Admin assignment takes time to propagate"
    );
}
