//! `connect clients`, locally next to a running server and on AWS (DynamoDB and Secrets
//! Manager on moto), through the binary.

use aws::testing::{emulator_config, unique};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;
use tests::Process;
use tests::{connect, output_text as text};

const GOOD: &str = r#"
[[clients]]
client_id = "loja-nova"
crm = "rdstation"
allowed_origins = ["https://www.loja-nova.example"]
secret_name = "/connect/rdstation/loja-nova/credentials"

[[rdstation]]
tid = "GA4.7.7"
client_id = "loja-nova"
"#;

const CONFLICTING: &str = r#"
[[clients]]
client_id = "loja-ruim"
crm = "responsys"
allowed_origins = ["https://www.loja-ruim.example"]
target = { profile_list = "A", list_name = "B" }
"#;

/// The lifecycle every backend must support; `base` runs `connect` with its flags.
fn lifecycle(dir: &Path, base: &dyn Fn(&[&str]) -> Output) {
    let good = dir.join("good.toml");
    std::fs::write(&good, GOOD).expect("write");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, CONFLICTING).expect("write");
    let secret = dir.join("creds.json");
    let good_s = good.to_str().expect("path");
    let bad_s = bad.to_str().expect("path");

    // validate and put refuse a conflicting target, naming the key.
    for args in [
        vec!["clients", "validate", "--file", bad_s],
        vec!["clients", "put", "--file", bad_s],
    ] {
        let out = base(&args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("list_name"), "{}", text(&out));
    }
    let out = base(&["clients", "validate", "--file", good_s]);
    assert!(out.status.success(), "{}", text(&out));
    let out = base(&["clients", "put", "--file", good_s]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("tid GA4.7.7"), "{}", text(&out));

    let out = base(&["clients", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|c| c["clientId"] == "loja-nova")
    );

    let out = base(&["clients", "disable", "loja-nova"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = base(&["clients", "show", "loja-nova"]);
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["active"], false);
    assert_eq!(shown["requireOrigin"], true, "the safe defaults are stored");
    assert!(base(&["clients", "enable", "loja-nova"]).status.success());

    // The secret: its shape is checked, it never comes from the command line.
    std::fs::write(&secret, r#"{"clientId": "x"}"#).expect("write");
    let out = base(&[
        "clients",
        "secret",
        "set",
        "loja-nova",
        "--from-file",
        secret.to_str().expect("path"),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("expected fields"), "{}", text(&out));
    std::fs::write(
        &secret,
        r#"{"clientId": "x", "clientSecret": "s3cr3t-value", "refreshToken": "r"}"#,
    )
    .expect("write");
    let out = base(&[
        "clients",
        "secret",
        "set",
        "loja-nova",
        "--from-file",
        secret.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("s3cr3t-value"),
        "the secret is never printed"
    );

    let out = base(&["clients", "rdstation", "map", "GA4.8.8", "loja-nova"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = base(&["clients", "validate"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = base(&["clients", "remove", "loja-nova"]);
    assert!(!out.status.success(), "remove asks for --yes");
    let out = base(&["clients", "remove", "loja-nova", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = base(&["clients", "show", "loja-nova"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no client loja-nova"), "{}", text(&out));
}

#[tokio::test]
async fn clients_are_onboarded_and_operated_locally_next_to_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Process::serve(&data, &["--demo"]);
    let data_s = data.to_str().expect("path").to_owned();
    lifecycle(dir.path(), &|args: &[&str]| {
        let mut all = vec!["--data", data_s.as_str()];
        all.extend_from_slice(args);
        connect(&all, &[])
    });
    // A client put while the server runs is served (within the client cache's 30 s).
    let good = dir.path().join("good.toml");
    assert!(
        connect(
            &[
                "--data",
                &data_s,
                "clients",
                "put",
                "--file",
                good.to_str().expect("path")
            ],
            &[]
        )
        .status
        .success()
    );
    assert!(
        connect(&["--data", &data_s, "clients", "disable", "loja-nova"], &[])
            .status
            .success()
    );
    let secrets: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("secrets.json")).expect("secrets"))
            .expect("json");
    assert_eq!(
        secrets["/connect/rdstation/loja-nova/credentials"]["clientSecret"],
        "s3cr3t-value"
    );
    drop(server);
}

#[tokio::test]
async fn clients_on_aws() {
    let Some(config) = emulator_config().await else {
        return;
    };
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let names = aws::provision::TableNames::with_prefix(&unique("clients"));
    aws::provision::create_tables(&ddb, &names)
        .await
        .expect("tables");
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("CLIENTS_TABLE", names.clients.clone()),
        ("RDSTATION_CONFIG_TABLE", names.rdstation.clone()),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push("--aws");
        connect(&all, &env_ref)
    };
    lifecycle(dir.path(), &run);
    let item = ddb
        .get_item()
        .table_name(&names.rdstation)
        .key(
            "tid",
            aws_sdk_dynamodb::types::AttributeValue::S("GA4.8.8".into()),
        )
        .send()
        .await
        .expect("get");
    assert!(
        item.item().is_some(),
        "the tid mapping is in the RD Station config table"
    );
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    let secret = sm
        .get_secret_value()
        .secret_id("/connect/rdstation/loja-nova/credentials")
        .send()
        .await
        .expect("secret created");
    let value: Value = serde_json::from_str(secret.secret_string().expect("string")).expect("json");
    assert_eq!(value["clientSecret"], json!("s3cr3t-value"));
}

#[tokio::test]
async fn test_authenticates_against_the_sandbox_and_says_what_to_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Process::serve(&data, &["--demo"]);
    let sandbox = server.sandbox.clone().expect("sandbox");
    let data_s = data.to_str().expect("path");
    let run = |args: &[&str]| {
        let mut all = vec!["--data", data_s];
        all.extend_from_slice(args);
        connect(&all, &[])
    };
    let out = run(&["clients", "test", "demo-responsys"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("OK"), "{}", text(&out));
    // A client whose credentials the CRM refuses, and one whose secret is missing.
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[[clients]]\nclient_id = \"bad-creds\"\ncrm = \"responsys\"\nsecret_name = \"/connect/responsys/bad-creds/credentials\"\n\n[[clients]]\nclient_id = \"no-secret\"\ncrm = \"salesforce\"\nsecret_name = \"/connect/salesforce/no-secret/credentials\"\n",
    )
    .expect("write");
    assert!(
        run(&["clients", "put", "--file", file.to_str().expect("path")])
            .status
            .success()
    );
    let creds = dir.path().join("creds.json");
    std::fs::write(
        &creds,
        json!({"username": "bad-creds", "password": "wrong", "loginUrl": format!("{sandbox}/responsys")}).to_string(),
    )
    .expect("write");
    assert!(
        run(&[
            "clients",
            "secret",
            "set",
            "bad-creds",
            "--from-file",
            creds.to_str().expect("path")
        ])
        .status
        .success()
    );
    let out = run(&["clients", "test", "bad-creds"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("refused the credentials")
            && text(&out).contains("clients secret set bad-creds"),
        "{}",
        text(&out)
    );
    let out = run(&["clients", "test", "no-secret"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
    // Good credentials, but a profile list the account does not have: refused by a
    // read-only check, naming the list and the ones that exist.
    std::fs::write(
        &file,
        "[[clients]]\nclient_id = \"wrong-list\"\ncrm = \"responsys\"\nsecret_name = \"/connect/responsys/wrong-list/credentials\"\ntarget = { list_name = \"MISSING_LIST\" }\n",
    )
    .expect("write");
    assert!(
        run(&["clients", "put", "--file", file.to_str().expect("path")])
            .status
            .success()
    );
    std::fs::write(
        &creds,
        json!({"username": "wrong-list", "password": "secret", "loginUrl": format!("{sandbox}/responsys")}).to_string(),
    )
    .expect("write");
    let set = ["clients", "secret", "set", "wrong-list", "--from-file"];
    let mut args = set.to_vec();
    args.push(creds.to_str().expect("path"));
    assert!(run(&args).status.success());
    let out = run(&["clients", "test", "wrong-list"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("MISSING_LIST does not exist") && text(&out).contains("CONTACTS_LIST"),
        "{}",
        text(&out)
    );
    // The webhook: a signed ping the twin verifies; with a secret the receiver does not
    // know, the answer names the status and what to check.
    let out = run(&["clients", "test", "demo-webhook"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("OK") && text(&out).contains("signed ping with 200"),
        "{}",
        text(&out)
    );
    std::fs::write(
        &creds,
        json!({"signingSecret": "a-secret-the-receiver-does-not-know"}).to_string(),
    )
    .expect("write");
    let mut args = vec!["clients", "secret", "set", "demo-webhook", "--from-file"];
    args.push(creds.to_str().expect("path"));
    assert!(run(&args).status.success());
    let out = run(&["clients", "test", "demo-webhook"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("401") && text(&out).contains("signing secret"),
        "{}",
        text(&out)
    );
    // A secret too short to be a signing key is refused before it is stored.
    std::fs::write(&creds, json!({"signingSecret": "short"}).to_string()).expect("write");
    let mut args = vec!["clients", "secret", "set", "demo-webhook", "--from-file"];
    args.push(creds.to_str().expect("path"));
    let out = run(&args);
    assert!(!out.status.success());
    assert!(text(&out).contains("signingSecret"), "{}", text(&out));
    assert!(!text(&out).contains("short\""), "the secret is not echoed");
}
