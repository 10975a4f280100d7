//! The front door's sockets: plain HTTP (--listen), HTTPS (--listen-tls,
//! certificates from `[tls]` in meshd.toml), the PROXY protocol and the
//! client-address headers (--proxy-protocol, --trusted-proxies).

use crate::cli::Args;
use crate::config::TlsConfig;
use anyhow::{bail, Context as _, Result};
use meshd_server::tls::{CertStore, CertWatch};
use meshd_server::{Edge, HttpsRedirect, Listener};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The certificates of the HTTPS listener, loaded before anything binds.
pub struct Certificates {
    store: Arc<CertStore>,
    watch: CertWatch,
    redirect_http: bool,
}

/// Reloads the certificates when their files change, until `shutdown`.
pub fn spawn_reloader(
    watch: CertWatch,
    store: Arc<CertStore>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(watch.run(store, shutdown.cancelled_owned()));
}

/// Loads the `[tls]` certificates when --listen-tls is given (each is
/// logged: host, subject, expiry); a flag and a table that do not fit
/// together are errors.
pub fn load_certificates(args: &Args, config: &TlsConfig) -> Result<Option<Certificates>> {
    let files = config.cert_files()?;
    if args.listen_tls.is_none() {
        if config.redirect_http {
            bail!(
                "[tls] redirect_http = true needs --listen-tls (the HTTPS address to redirect to)"
            );
        }
        if !files.is_empty() {
            tracing::warn!(
                "meshd.toml has [tls] certificates but --listen-tls is not set: HTTPS is off"
            );
        }
        return Ok(None);
    }
    if files.is_empty() {
        bail!(
            "--listen-tls needs certificates: add [tls] cert and key (and/or [tls.hosts.\"HOST\"] tables) to the config file given with --config"
        );
    }
    let store = Arc::new(CertStore::new());
    let watch = meshd_server::tls::load_all(&files, &store)?;
    Ok(Some(Certificates {
        store,
        watch,
        redirect_http: config.redirect_http,
    }))
}

/// The bound front door.
pub struct FrontDoor {
    /// Plain first, then TLS.
    pub listeners: Vec<Listener>,
    /// Forwarded headers and redirect.
    pub edge: Edge,
    /// The bound plain-HTTP address.
    pub plain: Option<SocketAddr>,
    /// The bound HTTPS address.
    pub tls: Option<SocketAddr>,
    /// The certificate reloader, to start once serving.
    pub reloader: Option<(CertWatch, Arc<CertStore>)>,
}

/// Binds --listen and --listen-tls.
pub async fn bind(args: &Args, certificates: Option<Certificates>) -> Result<FrontDoor> {
    let mut listeners = Vec::new();
    let mut plain = None;
    if let Some(addr) = args.plain_listen() {
        let socket = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        plain = Some(socket.local_addr()?);
        listeners.push(Listener::plain(socket).with_proxy_protocol(args.proxy_protocol));
    }
    let mut edge = Edge {
        trusted_proxies: args.trusted_proxies.clone(),
        redirect: None,
    };
    let mut tls = None;
    let mut reloader = None;
    if let (Some(addr), Some(certs)) = (args.listen_tls, certificates) {
        let socket = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for HTTPS on {addr}"))?;
        let bound = socket.local_addr()?;
        tls = Some(bound);
        let config = meshd_server::tls::server_config(certs.store.clone())?;
        listeners
            .push(Listener::tls(socket, Arc::new(config)).with_proxy_protocol(args.proxy_protocol));
        if certs.redirect_http {
            edge.redirect = Some(HttpsRedirect {
                certs: certs.store.clone(),
                port: bound.port(),
            });
        }
        reloader = Some((certs.watch, certs.store));
    }
    if !edge.trusted_proxies.is_empty() || args.proxy_protocol {
        tracing::info!(
            trusted_proxies = %edge.trusted_proxies,
            proxy_protocol = args.proxy_protocol,
            "client addresses: forwarded headers are appended to for trusted proxies, replaced for others"
        );
    }
    Ok(FrontDoor {
        listeners,
        edge,
        plain,
        tls,
        reloader,
    })
}
