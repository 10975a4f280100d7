//! The ACME exchange (RFC 8555) with instant-acme: the account (made once,
//! then reloaded from disk), and one order per host, answered by HTTP-01
//! or TLS-ALPN-01 through the front door's [`Challenges`].

use crate::storage::Storage;
use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use meshd_server::Challenges;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How a host proves control to the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// `http-01`: the CA fetches `http://HOST/.well-known/acme-challenge/T`
    /// from port 80 (meshd's plain listener).
    Http01,
    /// `tls-alpn-01`: the CA connects to port 443 (meshd's TLS listener)
    /// with the `acme-tls/1` protocol.
    TlsAlpn01,
}

impl ChallengeKind {
    fn acme_type(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }

    /// The name RFC 8555 and the config use.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// Longest one request to the CA may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the CA may take to validate an order, and to issue it.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTPS client instant-acme talks to the CA with: hyper 1 over
/// rustls (ring), trusting `[acme] ca_file` or Mozilla's roots.
#[derive(Clone)]
struct Http(
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<Bytes>,
    >,
);

impl Http {
    fn new(ca_file: Option<&Path>) -> Result<Http> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read [acme] ca_file {}", path.display()))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        anyhow!("[acme] ca_file {} is not valid PEM: {e}", path.display())
                    })?;
                    roots.add(cert).with_context(|| {
                        format!(
                            "[acme] ca_file {} holds a certificate rustls cannot use",
                            path.display()
                        )
                    })?;
                }
                if roots.is_empty() {
                    bail!("[acme] ca_file {} holds no PEM certificate", path.display());
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Http(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector),
        ))
    }
}

impl HttpClient for Http {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.0.request(req));
        Box::pin(async move {
            match response.await {
                Ok(Ok(response)) => Ok(BytesResponse::from(response)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Other(
                    format!("no answer from the ACME server within {REQUEST_TIMEOUT:?}").into(),
                )),
            }
        })
    }
}

/// A new certificate: chain and key, both PEM.
pub struct NewCert {
    /// The chain, leaf first.
    pub chain_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// Talks to one ACME directory for every host.
pub struct AcmeClient {
    directory: String,
    email: Option<String>,
    http: Http,
    storage: Storage,
    challenges: Arc<Challenges>,
    challenge: ChallengeKind,
    account: tokio::sync::OnceCell<Account>,
}

impl AcmeClient {
    /// A client of `directory`; reads `ca_file` now (a bad file stops
    /// meshd at start), contacts the CA only when it first orders.
    pub fn new(
        directory: &str,
        email: Option<String>,
        ca_file: Option<&Path>,
        storage: Storage,
        challenges: Arc<Challenges>,
        challenge: ChallengeKind,
    ) -> Result<AcmeClient> {
        Ok(AcmeClient {
            directory: directory.to_owned(),
            email,
            http: Http::new(ca_file)?,
            storage,
            challenges,
            challenge,
            account: tokio::sync::OnceCell::new(),
        })
    }

    /// The account: the stored one, or a new one (then stored). A failure
    /// is retried by the next order.
    async fn account(&self) -> Result<&Account> {
        self.account
            .get_or_try_init(|| async {
                let builder = Account::builder_with_http(Box::new(self.http.clone()));
                if let Some(credentials) = self.storage.load_account()? {
                    let account = builder
                        .from_credentials(credentials)
                        .await
                        .with_context(|| {
                            format!("cannot reach the ACME directory {}", self.directory)
                        })?;
                    tracing::info!(account = account.id(), directory = %self.directory, "ACME account loaded");
                    return Ok(account);
                }
                let contact = self.email.as_ref().map(|email| format!("mailto:{email}"));
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.directory.clone(),
                        None,
                    )
                    .await
                    .with_context(|| {
                        format!("cannot create an ACME account at {}", self.directory)
                    })?;
                self.storage.save_account(&credentials)?;
                tracing::info!(account = account.id(), directory = %self.directory, "ACME account created");
                Ok(account)
            })
            .await
    }

    /// Orders a certificate for `host` and waits for it: answers the
    /// challenge, finalizes with a new P-256 key, downloads the chain.
    pub async fn obtain(&self, host: &str) -> Result<NewCert> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("the CA refused the order")?;
        let mut answers = Answers {
            challenges: &self.challenges,
            tokens: Vec::new(),
            hosts: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.context("cannot fetch an authorization")?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => bail!("the authorization is {status:?}"),
            }
            let kind = self.challenge;
            let mut challenge = authorization
                .challenge(kind.acme_type())
                .with_context(|| format!("the CA offers no {} challenge", kind.as_str()))?;
            let key_authorization = challenge.key_authorization();
            match kind {
                ChallengeKind::Http01 => {
                    answers.http01(&challenge.token, key_authorization.as_str());
                }
                ChallengeKind::TlsAlpn01 => {
                    let cert = tls_alpn01_cert(host, key_authorization.digest().as_ref())?;
                    answers.tls_alpn01(host, cert);
                }
            }
            challenge
                .set_ready()
                .await
                .context("the CA refused the challenge")?;
        }
        let retries = RetryPolicy::new().timeout(VALIDATION_TIMEOUT);
        match order.poll_ready(&retries).await {
            Ok(OrderStatus::Ready) => {}
            Ok(_) => {
                return Err(validation_failure(&mut order, self.challenge)
                    .await
                    .unwrap_or_else(|| {
                        anyhow!("the order became invalid (the CA gave no reason)")
                    }))
            }
            Err(e) => {
                return Err(validation_failure(&mut order, self.challenge)
                    .await
                    .unwrap_or_else(|| anyhow!(e).context("the order did not become ready")))
            }
        }
        drop(answers);
        let key_pem = order
            .finalize()
            .await
            .context("the CA refused to finalize the order")?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .context("the CA did not issue the certificate")?;
        Ok(NewCert { chain_pem, key_pem })
    }
}

/// Why an order became invalid: the failed challenge's error, as the CA
/// reported it (`None` if no challenge has one).
async fn validation_failure(order: &mut Order, kind: ChallengeKind) -> Option<anyhow::Error> {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        for challenge in &state.challenges {
            if let Some(problem) = &challenge.error {
                return Some(anyhow!("{} validation failed: {problem}", kind.as_str()));
            }
        }
    }
    None
}

/// The challenge answers of one order; taken out of [`Challenges`] when
/// the order is over, whatever the outcome.
struct Answers<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
    hosts: Vec<String>,
}

impl Answers<'_> {
    fn http01(&mut self, token: &str, key_authorization: &str) {
        self.challenges.set_http01(token, key_authorization);
        self.tokens.push(token.to_owned());
    }

    fn tls_alpn01(&mut self, host: &str, cert: Arc<rustls::sign::CertifiedKey>) {
        self.challenges.set_tls_alpn01(host, cert);
        self.hosts.push(host.to_owned());
    }
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.challenges.remove_http01(token);
        }
        for host in &self.hosts {
            self.challenges.remove_tls_alpn01(host);
        }
    }
}

/// The self-signed certificate of a TLS-ALPN-01 answer (RFC 8737): the
/// host as its only name, and the SHA-256 digest of the key authorization
/// in the critical acmeIdentifier extension.
fn tls_alpn01_cert(host: &str, digest: &[u8]) -> Result<Arc<rustls::sign::CertifiedKey>> {
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])
        .context("cannot make a TLS-ALPN-01 certificate")?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().context("cannot make a TLS-ALPN-01 key")?;
    let cert = params
        .self_signed(&key)
        .context("cannot make a TLS-ALPN-01 certificate")?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow!("cannot use the TLS-ALPN-01 key: {e}"))?;
    // Not `CertifiedKey::from_der`: its check that key and certificate
    // match parses the certificate with webpki, which refuses the critical
    // acmeIdentifier extension (rustls only serves it, never checks it).
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key_der)
        .context("cannot use the TLS-ALPN-01 key")?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}
