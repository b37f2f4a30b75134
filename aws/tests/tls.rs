//! The AWS clients' trust store (`aws::env::shared_https_client`): the bundled roots are
//! Amazon Trust Services' five, they load into a TLS configuration, and an endpoint
//! certified by any other CA is refused before a request is sent.

use aws::env::{AMAZON_TRUST_SERVICES, TrustStore, shared_https_client};
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_sdk_dynamodb::error::SdkError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/tls")
        .join(name)
}

#[test]
fn the_bundled_roots_are_amazon_trust_services() {
    let certs = CertificateDer::pem_slice_iter(AMAZON_TRUST_SERVICES.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("valid PEM");
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).expect("a valid root certificate");
    }
    assert_eq!(roots.len(), 5);
    let subjects: Vec<String> = roots
        .roots
        .iter()
        .map(|anchor| String::from_utf8_lossy(anchor.subject.as_ref()).into_owned())
        .collect();
    for name in [
        "Amazon Root CA 1",
        "Amazon Root CA 2",
        "Amazon Root CA 3",
        "Amazon Root CA 4",
        "Starfield Services Root Certificate Authority - G2",
    ] {
        assert!(
            subjects.iter().any(|s| s.contains(name)),
            "{name} missing from {subjects:?}"
        );
    }
}

#[test]
fn the_trust_store_variable_is_parsed_strictly() {
    assert_eq!(TrustStore::parse(None), Ok(TrustStore::Amazon));
    assert_eq!(TrustStore::parse(Some("amazon")), Ok(TrustStore::Amazon));
    assert_eq!(TrustStore::parse(Some(" system ")), Ok(TrustStore::System));
    let err = TrustStore::parse(Some("none")).expect_err("an unknown value");
    assert!(err.to_string().contains("CONNECT_AWS_TRUST_STORE"), "{err}");
}

/// A TLS endpoint on loopback with a certificate for `localhost` from the test CA
/// (`fixtures/tls`), answering every request like DynamoDB's `ListTables`. Returns its
/// port and the count of completed handshakes.
async fn endpoint() -> (u16, Arc<AtomicUsize>) {
    let certs = CertificateDer::pem_file_iter(fixture("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("server.pem");
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).expect("server.key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&handshakes);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let list_tables = hyper::service::service_fn(|_| async {
                    hyper::Response::builder()
                        .header("content-type", "application/x-amz-json-1.0")
                        .body(r#"{"TableNames":[]}"#.to_owned())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), list_tables)
                    .await;
            });
        }
    });
    (port, handshakes)
}

fn dynamodb(port: u16, http: SharedHttpClient) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .endpoint_url(format!("https://localhost:{port}"))
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .http_client(http)
            .build(),
    )
}

#[tokio::test]
async fn an_endpoint_certified_by_another_ca_is_refused() {
    let (port, handshakes) = endpoint().await;

    // The control: a client trusting the test CA reaches the endpoint.
    let trusting_test_ca = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(
            aws_smithy_http_client::tls::TlsContext::builder()
                .with_trust_store(
                    aws_smithy_http_client::tls::TrustStore::empty()
                        .with_native_roots(false)
                        .with_pem_certificate(std::fs::read(fixture("ca.pem")).expect("ca.pem")),
                )
                .build()
                .expect("TLS context"),
        )
        .build_https();
    let tables = dynamodb(port, trusting_test_ca)
        .list_tables()
        .send()
        .await
        .expect("the test CA's client reaches the endpoint");
    assert!(tables.table_names().is_empty());
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);

    // Connect's client trusts Amazon Trust Services only: no handshake completes.
    let err = dynamodb(port, shared_https_client(TrustStore::Amazon))
        .list_tables()
        .send()
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(
        matches!(err, SdkError::DispatchFailure(_)),
        "not a connection failure: {err:?}"
    );
    let chain = format!("{:?}", aws_sdk_dynamodb::error::DisplayErrorContext(&err));
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
}
