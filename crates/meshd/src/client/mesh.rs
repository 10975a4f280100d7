//! `meshd publish` and `meshd apps --mesh`: the client side of the mesh,
//! talking to NATS directly (no meshd in between).

use super::http::Failure;
use super::{prepare, ManifestArgs};
use clap::Args;
use meshd_mesh::{MeshConfig, MeshView, Publisher, WaitOutcome};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the mesh's NATS servers (besides their URLs).
#[derive(Debug, Args)]
#[command(next_help_heading = "Mesh")]
pub struct MeshAccess {
    /// A NATS credentials file (.creds) for the mesh.
    #[arg(long, env = "MESHD_MESH_CREDS", value_name = "FILE")]
    pub mesh_creds: Option<PathBuf>,

    /// PEM CA to trust for tls:// NATS servers.
    #[arg(long, env = "MESHD_MESH_CA_FILE", value_name = "FILE")]
    pub mesh_ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The app's component (.wasm).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The app's name (letters, digits, '-' and '_'; at most 64). [default:
    /// FILE's name without its extension]
    #[arg(long, value_name = "NAME", value_parser = super::parse_app_name)]
    pub name: Option<String>,

    #[command(flatten)]
    pub manifest: ManifestArgs,

    /// The mesh's NATS servers, comma-separated (nats://HOST:PORT).
    #[arg(long, env = "MESHD_MESH", value_name = "URLS")]
    pub mesh: String,

    #[command(flatten)]
    pub access: MeshAccess,

    /// Wait until every live node serves the new version (or one refuses
    /// it: exit 1 with its reason).
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits before giving up (exit 3, naming the nodes
    /// that do not serve it yet).
    #[arg(long, default_value = "2m", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub wait_timeout: Duration,

    /// Print the stored desired state as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Who publishes, as the desired state records it.
fn publisher_name() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{user}@{host} (meshd publish)")
}

fn config(servers: &str, access: &MeshAccess) -> MeshConfig {
    MeshConfig {
        credentials: access.mesh_creds.clone(),
        ca_file: access.mesh_ca_file.clone(),
        ..MeshConfig::from_list(servers, &publisher_name())
    }
}

/// A runtime for the NATS client (the rest of the CLI is blocking).
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Unreachable(format!("cannot start an async runtime: {e}")))
}

fn unreachable(e: impl std::fmt::Display) -> Failure {
    Failure::Unreachable(e.to_string())
}

/// `meshd publish`.
pub fn publish(args: &PublishArgs, name: &str) -> Result<(), Failure> {
    let upload = prepare(&args.file, &args.manifest)?;
    let wasm = std::fs::read(&upload.wasm)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", upload.wasm.display())))?;
    let manifest = upload.manifest.map(|m| m.text);
    runtime()?.block_on(async {
        let publisher = Publisher::connect(&config(&args.mesh, &args.access), &publisher_name())
            .await
            .map_err(|e| unreachable(format!("{e:#}")))?;
        let stored = publisher
            .publish(name, &wasm, manifest)
            .await
            .map_err(publish_failure)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&stored).unwrap_or_default()
            );
        } else {
            println!(
                "published {name} version {} ({} bytes) at revision {}",
                stored.app.live.wasm.short(),
                stored.app.live.size,
                stored.revision
            );
        }
        if !args.wait {
            return Ok(());
        }
        let outcome = publisher
            .wait(name, &stored.app.live.wasm, false, args.wait_timeout)
            .await
            .map_err(|e| unreachable(format!("{e:#}")))?;
        match outcome {
            WaitOutcome::Live(nodes) => {
                println!("live on {} node(s): {}", nodes.len(), nodes.join(", "));
                Ok(())
            }
            WaitOutcome::Refused {
                node,
                kind,
                message,
            } => Err(Failure::Refused {
                status: 422,
                kind,
                message: format!(
                    "node {node} refused version {}: {message}",
                    stored.app.live.wasm.short()
                ),
            }),
            WaitOutcome::TimedOut(waiting) => Err(Failure::Unreachable(format!(
                "not live everywhere after {}: still waiting for {}",
                humantime::format_duration(args.wait_timeout),
                waiting.join(", ")
            ))),
            WaitOutcome::NoNodes => Err(Failure::Unreachable(
                "no meshd node reports to this mesh (is any started with --mesh?)".to_owned(),
            )),
        }
    })
}

fn publish_failure(e: meshd_mesh::PublishError) -> Failure {
    use meshd_mesh::PublishError;
    match e {
        PublishError::NotFound(app) => Failure::Refused {
            status: 404,
            kind: "not_found".to_owned(),
            message: format!("the mesh has no app named {app}"),
        },
        PublishError::BadRequest(message) => Failure::Refused {
            status: 400,
            kind: "bad_request".to_owned(),
            message,
        },
        PublishError::Mesh(e) => Failure::Unreachable(format!("{e:#}")),
    }
}

/// `meshd apps --mesh`.
pub fn show(
    servers: &str,
    access: &MeshAccess,
    name: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    runtime()?.block_on(async {
        let publisher = Publisher::connect(&config(servers, access), &publisher_name())
            .await
            .map_err(|e| unreachable(format!("{e:#}")))?;
        let mut view = publisher
            .view()
            .await
            .map_err(|e| unreachable(format!("{e:#}")))?;
        if let Some(name) = name {
            view.desired.retain(|app, _| app == name);
            for node in &mut view.nodes {
                node.apps.retain(|app, _| app == name);
            }
        }
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&view).unwrap_or_default()
            );
        } else {
            print!("{}", mesh_table(&view));
        }
        Ok(())
    })
}

/// One line per app and node: what the mesh wants and what each node
/// serves.
fn mesh_table(view: &MeshView) -> String {
    let mut out = tabwriter::TabWriter::new(Vec::new());
    let _ = writeln!(out, "APP\tDESIRED\tCANARY\tNODE\tLIVE\tNODE CANARY\tSTATE");
    for (app, entry) in &view.desired {
        let desired = entry.app.live.wasm.short();
        let canary = entry
            .app
            .canary
            .as_ref()
            .map(|c| format!("{} {}%", c.code.wasm.short(), c.percent))
            .unwrap_or_else(|| "-".to_owned());
        if view.nodes.is_empty() {
            let _ = writeln!(out, "{app}\t{desired}\t{canary}\t-\t-\t-\tno node");
        }
        for node in &view.nodes {
            let seen = node.apps.get(app);
            let live = seen
                .and_then(|a| a.live.as_deref())
                .map(|d| d[..12.min(d.len())].to_owned())
                .unwrap_or_else(|| "-".to_owned());
            let node_canary = seen
                .and_then(|a| a.canary.as_ref())
                .map(|c| format!("{} {}%", &c.wasm[..12.min(c.wasm.len())], c.percent))
                .unwrap_or_else(|| "-".to_owned());
            let state = match seen {
                _ if !node.synced => "syncing".to_owned(),
                Some(a) if a.live.as_deref() == Some(entry.app.live.wasm.to_hex().as_str()) => {
                    "live".to_owned()
                }
                Some(a) => match &a.refused {
                    Some(r) if r.retrying => {
                        format!("retrying ({}): {}", r.kind, r.message)
                    }
                    Some(r) => format!("refused ({}): {}", r.kind, r.message),
                    None => "deploying".to_owned(),
                },
                None => "deploying".to_owned(),
            };
            let _ = writeln!(
                out,
                "{app}\t{desired}\t{canary}\t{}\t{live}\t{node_canary}\t{state}",
                node.node
            );
        }
    }
    let _ = out.flush();
    let mut text = String::from_utf8(out.into_inner().unwrap_or_default()).unwrap_or_default();
    text.push_str(&format!(
        "{} app(s) desired, {} node(s) live: {}\n",
        view.desired.len(),
        view.nodes.len(),
        view.nodes
            .iter()
            .map(|n| n.node.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    text
}
