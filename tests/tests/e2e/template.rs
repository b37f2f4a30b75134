//! The packaged CloudFormation template (`osls package --stage ci`, run by
//! `./scripts/test`): least privilege per function, the event-source settings, and
//! both front doors (`rest`, and `cloudfront` packaged with `--param="front-door=cloudfront"`).

use serde_json::Value;
use std::collections::BTreeSet;

fn template() -> Option<Value> {
    packaged(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.serverless/cloudformation-template-update-stack.json"
    ))
}

/// The template of the `cloudfront` front door (`--param="front-door=cloudfront"`).
fn cloudfront_template() -> Option<Value> {
    packaged(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.serverless-cloudfront/cloudformation-template-update-stack.json"
    ))
}

fn packaged(path: &str) -> Option<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("template JSON")),
        Err(_) if std::env::var("CONNECT_REQUIRE_TEMPLATE").is_err() => {
            eprintln!("skipped: {path} is missing (./scripts/test packages it)");
            None
        }
        Err(e) => panic!("CONNECT_REQUIRE_TEMPLATE is set but {path} is missing: {e}"),
    }
}

fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

/// (actions, resources as JSON text) of every statement of a role, logs:* excluded.
fn statements(t: &Value, role: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let policies = t["Resources"][role]["Properties"]["Policies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    policies
        .iter()
        .flat_map(|p| {
            p["PolicyDocument"]["Statement"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|s| {
            let actions: Vec<String> = as_list(&s["Action"])
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            let resources: Vec<String> = as_list(&s["Resource"])
                .iter()
                .map(Value::to_string)
                .collect();
            (actions, resources)
        })
        .filter(|(a, _)| !a.iter().all(|x| x.starts_with("logs:")))
        .collect()
}

fn role_of(t: &Value, function: &str) -> String {
    t["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
        .as_str()
        .expect("role ref")
        .to_owned()
}

/// Every destination of the registry: (wire name, logical-id stem, token policy). The
/// deployment list in serverless.yml must give each of them its resources.
fn destinations() -> Vec<(&'static str, String, Option<crm::TokenPolicy>)> {
    domain::Crm::all()
        .map(|c| {
            let name = c.as_str();
            let cap = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
            (name, cap, crm::destination(c).auth_policy().token())
        })
        .collect()
}

#[test]
fn each_function_has_exactly_its_permissions_on_specific_resources() {
    let Some(t) = template() else { return };
    let set = |v: &[&str]| {
        v.iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<String>>()
    };
    let mut expected: Vec<(String, BTreeSet<String>)> = vec![
        (
            "IngestLambdaFunction".into(),
            set(&[
                "dynamodb:PutItem",
                "dynamodb:GetItem",
                "dynamodb:Scan",
                // The clients' event-signing keys, and refusal alerts.
                "secretsmanager:GetSecretValue",
                "sns:Publish",
                // Suppressions (LGPD).
                "dynamodb:Query",
            ]),
        ),
        (
            "FanoutLambdaFunction".into(),
            set(&[
                "dynamodb:DescribeStream",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:ListStreams",
                "sqs:SendMessage",
                "sns:Publish",
            ]),
        ),
    ];
    for (_, cap, policy) in destinations() {
        let mut deliver = vec![
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:ChangeMessageVisibility",
            "sqs:GetQueueAttributes",
            "sqs:SendMessage",
            "dynamodb:GetItem",
            "secretsmanager:GetSecretValue",
            "sns:Publish",
            // Suppressions (LGPD).
            "dynamodb:Query",
        ];
        let rotating = policy.is_some_and(|p| p.rotating_refresh_token);
        if policy.is_some() {
            // Tokens refreshed inline are stored.
            deliver.push("dynamodb:PutItem");
        }
        if rotating {
            // An inline refresh may rotate the refresh token, under a lease.
            deliver.push("secretsmanager:PutSecretValue");
            deliver.push("dynamodb:DeleteItem");
        }
        expected.push((format!("Deliver{cap}LambdaFunction"), set(&deliver)));
        if policy.is_none() {
            // Signs with its secret: no token function, no schedule.
            assert!(
                t["Resources"]
                    .get(format!("Token{cap}LambdaFunction"))
                    .is_none(),
                "{cap} keeps no token"
            );
            continue;
        }
        let mut token = vec![
            "secretsmanager:GetSecretValue",
            "secretsmanager:PutSecretValue",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:Scan",
            "sns:Publish",
        ];
        if rotating {
            token.push("dynamodb:DeleteItem");
        }
        expected.push((format!("Token{cap}LambdaFunction"), set(&token)));
    }
    let mut roles = BTreeSet::new();
    for (function, actions) in &expected {
        let role = role_of(&t, function);
        assert!(roles.insert(role.clone()), "{function} shares a role");
        let stmts = statements(&t, &role);
        let got: BTreeSet<String> = stmts.iter().flat_map(|(a, _)| a.clone()).collect();
        assert_eq!(&got, actions, "{function}");
        for (acts, resources) in &stmts {
            for a in acts {
                assert!(
                    a != "*" && !a.ends_with(":*"),
                    "{function}: wildcard action {a}"
                );
            }
            for r in resources {
                assert_ne!(r, "\"*\"", "{function}: Resource * for {acts:?}");
            }
            let installation_key = resources
                .iter()
                .all(|r| r.contains("\"Ref\":\"InstallationKeySecret\""));
            if installation_key {
                assert_eq!(acts, &["secretsmanager:GetSecretValue"], "{function}");
            } else if function == "IngestLambdaFunction"
                && acts.iter().any(|a| a.starts_with("secretsmanager:"))
            {
                assert_eq!(acts, &["secretsmanager:GetSecretValue"]);
                assert!(
                    resources
                        .iter()
                        .all(|r| r.contains(":secret:/connect/signing/*")),
                    "ingest reads signing keys only: {resources:?}"
                );
            } else if acts.iter().any(|a| a.starts_with("secretsmanager:")) {
                let crm = destinations()
                    .into_iter()
                    .find(|(_, cap, _)| function.contains(cap.as_str()))
                    .map(|(c, _, _)| c)
                    .expect("crm");
                assert!(
                    resources
                        .iter()
                        .all(|r| r.contains(&format!(":secret:/connect/{crm}/*"))),
                    "{function}: {resources:?}"
                );
            }
        }
    }
    // The framework's shared role is attached to no function.
    let functions: Vec<&String> = t["Resources"]
        .as_object()
        .expect("resources")
        .iter()
        .filter(|(_, v)| v["Type"] == "AWS::Lambda::Function")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(functions.len(), expected.len());
    for f in functions {
        assert_ne!(role_of(&t, f), "IamRoleLambdaExecution", "{f}");
    }
}

#[test]
fn event_sources_report_partial_failures_and_are_bounded() {
    let Some(t) = template() else { return };
    let resources = t["Resources"].as_object().expect("resources");
    let mappings: Vec<&Value> = resources
        .values()
        .filter(|v| v["Type"] == "AWS::Lambda::EventSourceMapping")
        .collect();
    let all = destinations();
    assert_eq!(
        mappings.len(),
        1 + all.len(),
        "one stream, one queue per destination"
    );
    for m in &mappings {
        let p = &m["Properties"];
        assert_eq!(
            p["FunctionResponseTypes"],
            serde_json::json!(["ReportBatchItemFailures"]),
            "{p}"
        );
        let function = p["FunctionName"]["Fn::GetAtt"][0]
            .as_str()
            .expect("function");
        if function == "FanoutLambdaFunction" {
            assert_eq!(p["BisectBatchOnFunctionError"], true);
            assert!(
                // Retried as long as the stream keeps records (bounded: never -1).
                p["MaximumRetryAttempts"]
                    .as_i64()
                    .is_some_and(|n| (1000..=10_000).contains(&n))
            );
            assert_eq!(p["MaximumRecordAgeInSeconds"].as_i64(), Some(86_400));
            assert!(p["DestinationConfig"]["OnFailure"]["Destination"].is_object());
            let pattern = p["FilterCriteria"]["Filters"][0]["Pattern"]
                .as_str()
                .expect("pattern");
            let pattern: Value = serde_json::from_str(pattern).expect("json");
            assert_eq!(pattern["eventName"], serde_json::json!(["INSERT"]));
        } else {
            assert!(
                p["ScalingConfig"]["MaximumConcurrency"]
                    .as_i64()
                    .is_some_and(|n| n >= 2),
                "{function}"
            );
            assert!(p["BatchSize"].as_i64().is_some_and(|n| n >= 1));
        }
    }
    for (_, cap, _) in &all {
        let q = &resources[&format!("{cap}Queue")]["Properties"];
        let timeout = resources[&format!("Deliver{cap}LambdaFunction")]["Properties"]["Timeout"]
            .as_i64()
            .expect("timeout");
        assert!(
            q["VisibilityTimeout"].as_i64().expect("vt") >= 6 * timeout,
            "{cap}"
        );
        assert!(q["RedrivePolicy"]["maxReceiveCount"].as_i64().is_some());
        assert_eq!(
            resources[&format!("{cap}Dlq")]["Properties"]["MessageRetentionPeriod"],
            1_209_600
        );
    }
    let rules: Vec<&Value> = resources
        .values()
        .filter(|v| v["Type"] == "AWS::Events::Rule")
        .collect();
    assert_eq!(
        rules.len(),
        all.iter().filter(|(_, _, p)| p.is_some()).count(),
        "one schedule per destination that keeps tokens"
    );
    for r in rules {
        for target in r["Properties"]["Targets"].as_array().expect("targets") {
            assert!(
                target.get("Input").is_none(),
                "no input: the EventBridge envelope stays intact"
            );
        }
    }
}

#[test]
fn the_front_door_bounds_abuse_before_it_reaches_a_lambda() {
    let Some(t) = template() else { return };
    let resources = t["Resources"].as_object().expect("resources");
    // WAF: the managed rule that blocks bodies over 8 KB only counts, and Connect's
    // own rule blocks bodies over the 32 KiB contract.
    let rules = t["Resources"]["WebAcl"]["Properties"]["Rules"]
        .as_array()
        .expect("rules");
    let common = rules
        .iter()
        .find(|r| {
            r["Statement"]["ManagedRuleGroupStatement"]["Name"] == "AWSManagedRulesCommonRuleSet"
        })
        .expect("common rule set");
    let overrides = common["Statement"]["ManagedRuleGroupStatement"]["RuleActionOverrides"]
        .as_array()
        .expect("overrides");
    assert!(
        overrides.iter().any(
            |o| o["Name"] == "SizeRestrictions_BODY" && o["ActionToUse"].get("Count").is_some()
        ),
        "{overrides:?}"
    );
    let size = rules
        .iter()
        .find(|r| r["Statement"].get("SizeConstraintStatement").is_some())
        .expect("body size rule");
    assert!(size["Action"].get("Block").is_some());
    let c = &size["Statement"]["SizeConstraintStatement"];
    assert_eq!(c["ComparisonOperator"], "GT");
    assert_eq!(c["Size"].as_u64(), Some(ingest::MAX_BODY_BYTES as u64));
    assert!(c["FieldToMatch"]["Body"].is_object());
    assert!(
        rules
            .iter()
            .any(|r| r["Statement"]["RateBasedStatement"]["AggregateKeyType"] == "IP"),
        "per-IP rate rule"
    );
    // The pixel routes (GET and HEAD) and GIF answers; no access log (the pixel's query
    // holds an email).
    for (_, route, _) in destinations() {
        for method in ["Get", "Head"] {
            let id = format!("ApiGatewayMethod{route}P{method}");
            assert!(resources.contains_key(&id), "{id} missing");
        }
    }
    let binary = &t["Resources"]["ApiGatewayRestApi"]["Properties"]["BinaryMediaTypes"];
    assert!(
        binary
            .as_array()
            .is_some_and(|b| b.iter().any(|m| m == "image/gif")),
        "{binary}"
    );
    assert!(
        resources
            .values()
            .all(|r| r["Type"] != "AWS::ApiGateway::Stage"
                || r["Properties"].get("AccessLogSetting").is_none()),
        "an access log would record pixel queries"
    );
    // API Gateway stage throttling.
    let deployment = resources
        .values()
        .find(|r| r["Type"] == "AWS::ApiGateway::Deployment")
        .expect("deployment");
    let stage = &deployment["Properties"]["StageDescription"];
    assert!(
        stage["ThrottlingRateLimit"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{stage}"
    );
    assert!(
        stage["ThrottlingBurstLimit"]
            .as_f64()
            .is_some_and(|b| b > 0.0),
        "{stage}"
    );
    // Reserved concurrency on ingest only: a flood cannot starve fanout and delivery.
    let ingest = &t["Resources"]["IngestLambdaFunction"]["Properties"];
    assert!(
        ingest["ReservedConcurrentExecutions"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{ingest}"
    );
    for (name, r) in resources {
        if r["Type"] == "AWS::Lambda::Function" && name != "IngestLambdaFunction" {
            assert!(
                r["Properties"]
                    .get("ReservedConcurrentExecutions")
                    .is_none(),
                "{name} would take concurrency from the shared pool"
            );
        }
    }
}

#[test]
fn stream_lag_and_fanout_failures_raise_alarms_that_name_the_way_out() {
    let Some(t) = template() else { return };
    let resources = t["Resources"].as_object().expect("resources");
    let alarms: Vec<&Value> = resources
        .values()
        .filter(|r| r["Type"] == "AWS::CloudWatch::Alarm")
        .collect();
    let iterator_age = alarms
        .iter()
        .find(|a| a["Properties"]["MetricName"] == "IteratorAge")
        .expect("IteratorAge alarm");
    assert_eq!(
        iterator_age["Properties"]["Dimensions"][0]["Value"]["Ref"],
        "FanoutLambdaFunction"
    );
    let fanout_failed = alarms
        .iter()
        .find(|a| {
            a["Properties"]["MetricName"] == "FanoutFailed"
                && a["Properties"]["Namespace"] == "Connect"
        })
        .expect("FanoutFailed alarm");
    assert!(fanout_failed["Properties"]["AlarmActions"].is_array());
    for a in [iterator_age, fanout_failed] {
        let text = a["Properties"]["AlarmDescription"].as_str().expect("text");
        assert!(text.contains("connect replay"), "{text}");
    }
    // And the queue of stream failures points to replay, not to `dlq`.
    let stream = alarms
        .iter()
        .find(|a| {
            a["Properties"]["AlarmDescription"]
                .as_str()
                .is_some_and(|d| d.starts_with("StreamFailureQueue"))
        })
        .expect("stream failure alarm");
    assert!(
        stream["Properties"]["AlarmDescription"]
            .as_str()
            .is_some_and(|d| d.contains("connect replay"))
    );
}

#[test]
fn every_destination_of_the_registry_is_deployed_from_the_list() {
    let Some(t) = template() else { return };
    let resources = t["Resources"].as_object().expect("resources");
    let fanout_env = &resources["FanoutLambdaFunction"]["Properties"]["Environment"]["Variables"];
    for (name, cap, policy) in destinations() {
        for id in [
            format!("ApiGatewayMethod{cap}Post"),
            format!("ApiGatewayMethod{cap}Options"),
            format!("{cap}Queue"),
            format!("{cap}Dlq"),
            format!("Deliver{cap}LambdaFunction"),
            format!("Deliver{cap}ErrorRateAlarm"),
            format!("{cap}DlqDepthAlarm"),
            format!("{cap}Dashboard"),
        ] {
            assert!(resources.contains_key(&id), "{name}: {id} missing");
        }
        let upper = name.to_uppercase();
        assert_eq!(
            fanout_env[format!("QUEUE_URL_{upper}")]["Ref"],
            format!("{cap}Queue")
        );
        assert_eq!(
            fanout_env[format!("DLQ_URL_{upper}")]["Ref"],
            format!("{cap}Dlq")
        );
        let deliver_env = &resources[&format!("Deliver{cap}LambdaFunction")]["Properties"]["Environment"]
            ["Variables"];
        assert_eq!(deliver_env["CRM"], name);
        let parts =
            resources[&format!("{cap}Dashboard")]["Properties"]["DashboardBody"]["Fn::Join"][1]
                .as_array()
                .cloned()
                .unwrap_or_default();
        let text: String = parts
            .iter()
            .map(|p| p.as_str().unwrap_or("us-east-1").to_owned())
            .collect();
        let body: Value = serde_json::from_str(&text).expect("dashboard body is JSON");
        let expression = body["widgets"][0]["properties"]["metrics"][0][0]["expression"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            expression.contains(&format!("crm=\"{name}\"")),
            "{name}: {expression}"
        );
        for alarm in ["ErrorRateAlarm", "ErrorsAlarm"] {
            assert_eq!(
                resources.contains_key(&format!("Token{cap}{alarm}")),
                policy.is_some(),
                "{name}: Token{cap}{alarm}"
            );
        }
        let outputs = &t["Outputs"];
        assert!(outputs[format!("{cap}QueueUrl")].is_object(), "{name}");
        assert!(outputs[format!("{cap}DlqUrl")].is_object(), "{name}");
    }
}

#[test]
fn the_cloudfront_door_keeps_the_waf_and_lets_only_its_distribution_call_ingest() {
    let (Some(rest), Some(cf)) = (template(), cloudfront_template()) else {
        return;
    };
    let ingest_env = |t: &Value| {
        t["Resources"]["IngestLambdaFunction"]["Properties"]["Environment"]["Variables"]
            ["INGEST_EVENT_SOURCE"]
            .clone()
    };
    // The default door: API Gateway events, the ACL regional and associated to the stage.
    assert_eq!(ingest_env(&rest), "apigateway");
    assert_eq!(
        rest["Resources"]["WebAcl"]["Properties"]["Scope"],
        "REGIONAL"
    );
    assert!(rest["Resources"].get("WebAclAssociation").is_some());
    assert!(rest["Resources"].get("IngestDistribution").is_none());

    let r = &cf["Resources"];
    let of_type = |ty: &str| {
        r.as_object()
            .expect("resources")
            .iter()
            .filter(|(_, v)| v["Type"] == ty)
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    };
    // No API Gateway at all; ingest reads function URL events.
    let apigw: Vec<_> = r
        .as_object()
        .expect("resources")
        .iter()
        .filter(|(_, v)| {
            v["Type"]
                .as_str()
                .is_some_and(|t| t.starts_with("AWS::ApiGateway"))
        })
        .map(|(k, _)| k.clone())
        .collect();
    assert!(apigw.is_empty(), "{apigw:?}");
    assert_eq!(ingest_env(&cf), "function-url");
    // The same WAF rules, scoped to CloudFront and attached to the distribution.
    assert_eq!(r["WebAcl"]["Properties"]["Scope"], "CLOUDFRONT");
    assert_eq!(
        r["WebAcl"]["Properties"]["Rules"],
        rest["Resources"]["WebAcl"]["Properties"]["Rules"]
    );
    let dist = &r["IngestDistribution"]["Properties"]["DistributionConfig"];
    assert_eq!(dist["WebACLId"]["Fn::GetAtt"][0], "WebAcl");
    assert!(
        dist.get("Logging").is_none(),
        "the pixel's query holds an email: no access log"
    );
    // Only the distribution can call the URL: IAM auth, signed by its origin access control.
    assert_eq!(
        of_type("AWS::Lambda::Url"),
        vec!["IngestFunctionUrl".to_owned()]
    );
    assert_eq!(r["IngestFunctionUrl"]["Properties"]["AuthType"], "AWS_IAM");
    let origin = &dist["Origins"][0];
    assert_eq!(
        origin["OriginAccessControlId"]["Fn::GetAtt"][0],
        "IngestOriginAccessControl"
    );
    let oac = &r["IngestOriginAccessControl"]["Properties"]["OriginAccessControlConfig"];
    assert_eq!(oac["OriginAccessControlOriginType"], "lambda");
    assert_eq!(oac["SigningBehavior"], "always");
    let permissions = of_type("AWS::Lambda::Permission");
    let ingest_permissions: Vec<&Value> = permissions
        .iter()
        .map(|k| &r[k]["Properties"])
        .filter(|p| {
            p["FunctionName"]
                .to_string()
                .contains("IngestLambdaFunction")
        })
        .collect();
    assert_eq!(ingest_permissions.len(), 2, "{ingest_permissions:?}");
    for p in ingest_permissions {
        assert_eq!(p["Principal"], "cloudfront.amazonaws.com");
        assert!(
            p["SourceArn"].to_string().contains("IngestDistribution"),
            "only this distribution: {p}"
        );
    }
    // Nothing cached; only what ingest reads is forwarded (the viewer's address for
    // the per-IP limits, the pixel's `d`), no cookies.
    let behavior = &dist["DefaultCacheBehavior"];
    assert_eq!(
        behavior["CachePolicyId"],
        "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
    );
    assert_eq!(behavior["ViewerProtocolPolicy"], "https-only");
    let policy = &r["IngestOriginRequestPolicy"]["Properties"]["OriginRequestPolicyConfig"];
    let headers = policy["HeadersConfig"]["Headers"].to_string();
    for h in [
        "Origin",
        "Referer",
        "CloudFront-Viewer-Address",
        "x-amz-content-sha256",
    ] {
        assert!(headers.contains(h), "{h} not forwarded: {headers}");
    }
    assert_eq!(policy["CookiesConfig"]["CookieBehavior"], "none");
    assert_eq!(
        policy["QueryStringsConfig"]["QueryStrings"],
        serde_json::json!(["d"])
    );
    // Alarmed, and the URL to give the GTM template is the distribution's.
    assert_eq!(
        r["Api5xxAlarm"]["Properties"]["Namespace"],
        "AWS/CloudFront"
    );
    assert!(
        cf["Outputs"]["ApiUrl"]["Value"]
            .to_string()
            .contains("IngestDistribution")
    );
}
