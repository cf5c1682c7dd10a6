//! The HTTP transport under the object-store clients: hyper with rustls on the `ring` provider
//! and the system's root certificates.
//!
//! `object_store`'s own transport is reqwest, whose TLS features would make every reqwest
//! client in the workspace (the devcluster's probes, the tests) need a process-wide crypto
//! provider installed first, or pull in aws-lc. hyper, hyper-rustls and ring are in the tree
//! already (the Kubernetes client uses them), and `object_store` takes a transport through its
//! [`HttpConnector`] interface; this is that transport.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse, HttpResponseBody,
    HttpService,
};
use object_store::{ClientConfigKey, ClientOptions};

/// How long a TCP (and TLS) connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to answer a request's headers.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes [`Transport`]s for the store clients.
#[derive(Debug, Default)]
pub struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let allow_http = options.get_config_value(&ClientConfigKey::AllowHttp).is_some_and(|v| v == "true");
        let client = https_client(allow_http)
            .map_err(|e| object_store::Error::Generic { store: "http", source: Box::new(e) })?;
        Ok(HttpClient::new(Transport { client }))
    }
}

/// A pooled HTTP client with rustls (ring, the system's roots), plain http only if `allow_http`.
pub(super) fn https_client<B>(allow_http: bool) -> Result<Client<HttpsConnector<TcpConnector>, B>, rustls::Error>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let provider = rustls::crypto::ring::default_provider();
    let tls = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider) {
        Ok(builder) => builder,
        Err(error) => {
            tracing::warn!(%error, "no system root certificates: https:// stores will fail to verify");
            let config = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let mut tcp = TcpConnector::new();
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tcp.enforce_http(false);
    let tls = match allow_http {
        true => tls.https_or_http(),
        false => tls.https_only(),
    };
    let connector = tls.enable_http1().wrap_connector(tcp);
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

/// One pooled hyper client.
#[derive(Debug)]
struct Transport {
    client: Client<HttpsConnector<TcpConnector>, HttpRequestBody>,
}

#[async_trait::async_trait]
impl HttpService for Transport {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(request))
            .await
            .map_err(|elapsed| HttpError::new(HttpErrorKind::Timeout, elapsed))?
            .map_err(|error| {
                let kind = if error.is_connect() { HttpErrorKind::Connect } else { HttpErrorKind::Request };
                HttpError::new(kind, error)
            })?;
        Ok(response
            .map(|body| HttpResponseBody::new(body.map_err(|error| HttpError::new(HttpErrorKind::Interrupted, error)))))
    }
}
