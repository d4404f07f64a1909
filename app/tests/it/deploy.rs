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
                source(fic, "parent_id"),
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

#[test]
fn namespaces_enforce_restricted_pods_and_egress_names_its_destinations() {
    // Scenario: both namespaces enforce the restricted Pod Security Standard and every pod meets it; the
    // NetworkPolicy allows DNS only to kube-dns, 5432 only to the server's delegated subnet (Terraform's),
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
            Yaml::Mapping(Default::default())
        );
        assert_eq!(policy["spec"]["ingress"], Yaml::Sequence(vec![]));
        let rules = policy["spec"]["egress"].as_sequence().expect("egress");
        let rule = |port: u64| {
            rules
                .iter()
                .find(|r| {
                    r["ports"]
                        .as_sequence()
                        .is_some_and(|ps| ps.iter().any(|p| p["port"] == port))
                })
                .unwrap_or_else(|| panic!("no egress rule for port {port}"))
        };
        for rule in rules {
            let to = rule["to"]
                .as_sequence()
                .expect("every egress rule names its destinations");
            assert!(!to.is_empty());
        }
        let dns = &rule(53)["to"][0];
        assert_eq!(
            dns["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "kube-system"
        );
        assert_eq!(dns["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
        assert_eq!(
            rule(5432)["to"][0]["ipBlock"]["cidr"],
            example["POSTGRES_SUBNET_CIDR"].as_str()
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
            assert!(except.contains(&range), "443 excludes {range}");
        }
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
