//! The front door's sockets: plain HTTP (--listen), HTTPS (--listen-tls,
//! certificates from `[tls]` in meshd.toml), or sockets the service manager
//! passed (socket activation), the PROXY protocol and the client-address
//! headers (--proxy-protocol, --trusted-proxies).

use crate::cli::Args;
use crate::config::{AcmeConfig, TlsConfig};
use anyhow::{bail, Context as _, Result};
use meshd_server::tls::{CertStore, CertWatch};
use meshd_server::{Challenges, Edge, HttpsRedirect, Listener};
use std::net::SocketAddr;
use std::os::fd::FromRawFd as _;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The certificates of the HTTPS listener, loaded before anything binds.
pub struct Certificates {
    store: Arc<CertStore>,
    watch: CertWatch,
    redirect_http: bool,
    /// ACME's challenge answers (`[acme]` is on).
    challenges: Option<Arc<Challenges>>,
}

/// Reloads the certificates when their files change, until `shutdown`.
pub fn spawn_reloader(
    watch: CertWatch,
    store: Arc<CertStore>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(watch.run(store, shutdown.cancelled_owned()));
}

/// Sockets the service manager passed (systemd socket activation: a
/// `.socket` unit with `FileDescriptorName=http` and/or `https`), which
/// meshd serves instead of binding --listen / --listen-tls itself. This is
/// how meshd serves ports 80 and 443 without any privilege of its own.
///
/// A graceful restart (crate::handover) passes its sockets the same way,
/// with two more names: `admin` and `metrics`.
#[derive(Default)]
pub struct Activated {
    http: Option<std::net::TcpListener>,
    https: Option<std::net::TcpListener>,
    /// The admin API's socket (--admin).
    pub admin: Option<std::net::TcpListener>,
    /// The metrics socket (--metrics-listen).
    pub metrics: Option<std::net::TcpListener>,
}

impl Activated {
    /// Takes the sockets named in `LISTEN_FDS`/`LISTEN_FDNAMES` (none when
    /// meshd was not socket-activated).
    pub fn take() -> Result<Activated> {
        let mut activated = Activated::default();
        let passed = sd_notify::listen_fds_with_names()
            .context("cannot read the sockets the service manager passed (LISTEN_FDS)")?;
        for (fd, name) in passed {
            // SAFETY: the service manager passed `fd` to this process
            // (LISTEN_PID is ours) for it to own; nothing else in meshd
            // knows of it.
            let socket = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            let addr = socket.local_addr().with_context(|| {
                format!("the socket {name:?} the service manager passed is not a TCP socket")
            })?;
            socket.set_nonblocking(true)?;
            let slot = match name.as_str() {
                "http" => &mut activated.http,
                "https" => &mut activated.https,
                "admin" => &mut activated.admin,
                "metrics" => &mut activated.metrics,
                other => bail!(
                    "the service manager passed a socket named {other:?} ({addr}); name meshd's sockets http, https, admin or metrics (FileDescriptorName= in the .socket unit)"
                ),
            };
            if slot.replace(socket).is_some() {
                bail!("the service manager passed two sockets named {name:?}");
            }
        }
        Ok(activated)
    }

    /// No front-door socket was passed.
    fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }
}

/// Loads the `[tls]` certificates when HTTPS is on (--listen-tls, or an
/// `https` socket passed); each is logged: host, subject, expiry. A flag
/// and a table that do not fit together are errors.
pub fn load_certificates(
    args: &Args,
    config: &TlsConfig,
    acme: Option<&AcmeConfig>,
    activated: &Activated,
) -> Result<Option<Certificates>> {
    let files = config.cert_files()?;
    if args.listen_tls.is_none() && activated.https.is_none() {
        if acme.is_some() {
            bail!("[acme] needs --listen-tls (the HTTPS address that serves the certificates)");
        }
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
    if files.is_empty() && acme.is_none() {
        bail!(
            "--listen-tls needs certificates: add [tls] cert and key (and/or [tls.hosts.\"HOST\"] tables), or [acme], to the config file given with --config"
        );
    }
    if acme.is_some() && config.cert.is_none() {
        tracing::info!("no default certificate in [tls]: TLS clients asking for a name that has no certificate yet (or none) are refused at the handshake");
    }
    let store = Arc::new(CertStore::new());
    let watch = meshd_server::tls::load_all(&files, &store)?;
    Ok(Some(Certificates {
        store,
        watch,
        redirect_http: config.redirect_http,
        challenges: acme.map(|_| Arc::new(Challenges::new())),
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
    /// Where ACME puts certificates and challenge answers (`[acme]` on).
    pub acme: Option<(Arc<CertStore>, Arc<Challenges>)>,
    /// Copies of the sockets, for a graceful restart to pass on.
    pub passed: Vec<crate::handover::Passed>,
}

/// Binds --listen and --listen-tls, or takes the sockets passed instead.
pub async fn bind(
    args: &Args,
    certificates: Option<Certificates>,
    mut activated: Activated,
) -> Result<FrontDoor> {
    let mut listeners = Vec::new();
    let mut plain = None;
    // Socket-activated, the default address does not apply: only the
    // sockets passed and the addresses given.
    let plain_addr = if activated.is_empty() {
        args.plain_listen()
    } else {
        args.listen
    };
    let plain_socket = match (activated.http.take(), plain_addr) {
        (Some(socket), _) => Some(TcpListener::from_std(socket)?),
        (None, Some(addr)) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        (None, None) => None,
    };
    let mut passed = Vec::new();
    if let Some(socket) = plain_socket {
        passed.push(crate::handover::Passed::dup("http", &socket)?);
        plain = Some(socket.local_addr()?);
        listeners.push(Listener::plain(socket).with_proxy_protocol(args.proxy_protocol));
    }
    let mut edge = Edge {
        trusted_proxies: args.trusted_proxies.clone(),
        redirect: None,
        challenges: None,
    };
    let mut tls = None;
    let mut reloader = None;
    let mut acme = None;
    if let Some(certs) = certificates {
        let socket = match (activated.https.take(), args.listen_tls) {
            (Some(socket), _) => TcpListener::from_std(socket)?,
            (None, Some(addr)) => TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTPS on {addr}"))?,
            (None, None) => bail!("HTTPS has certificates but no address"),
        };
        let bound = socket.local_addr()?;
        passed.push(crate::handover::Passed::dup("https", &socket)?);
        tls = Some(bound);
        let config =
            meshd_server::tls::server_config(certs.store.clone(), certs.challenges.clone())?;
        if let Some(challenges) = &certs.challenges {
            edge.challenges = Some(challenges.clone());
            acme = Some((certs.store.clone(), challenges.clone()));
        }
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
        acme,
        passed,
    })
}
