//! `[acme]`: starts meshd-acme once the front door is bound (its
//! challenges are answered there).

use crate::config::{AcmeConfig, ChallengeName, TlsConfig};
use crate::front_door::FrontDoor;
use anyhow::Result;
use meshd_acme::{AcmeSettings, ChallengeKind, Hosts, Statuses};
use std::path::Path;
use std::sync::Arc;

/// Starts obtaining and renewing certificates in the background, into
/// `statuses` (what the admin API shows).
pub fn start(
    config: &AcmeConfig,
    tls: &TlsConfig,
    data_dir: &Path,
    front: &FrontDoor,
    registry: &Arc<meshd_registry::Registry>,
    statuses: Statuses,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let Some((store, challenges)) = &front.acme else {
        anyhow::bail!("[acme] needs --listen-tls (the HTTPS address that serves the certificates)");
    };
    // HTTP-01 needs the plain listener (the CA asks on port 80); without
    // one, TLS-ALPN-01 on the TLS listener (port 443).
    let challenge = match (config.challenge, front.plain) {
        (Some(ChallengeName::Http01), None) => anyhow::bail!(
            "[acme] challenge = \"http-01\" needs a plain-HTTP listener (--listen, on port 80 for a public CA)"
        ),
        (Some(ChallengeName::Http01), Some(_)) | (None, Some(_)) => ChallengeKind::Http01,
        (Some(ChallengeName::TlsAlpn01), _) | (None, None) => ChallengeKind::TlsAlpn01,
    };
    let hosts = match config.listed_hosts() {
        Some(list) => Hosts::Listed(list),
        None => Hosts::Routes {
            registry: registry.clone(),
            except: tls.hosts.keys().map(|h| h.to_ascii_lowercase()).collect(),
        },
    };
    meshd_acme::start(
        AcmeSettings {
            directory: config.directory.clone(),
            email: config.email.clone(),
            ca_file: config.ca_file.clone(),
            dir: data_dir.join("acme"),
            challenge,
        },
        hosts,
        store.clone(),
        challenges.clone(),
        statuses,
        shutdown,
    )
}
