//! The command line as a whole, and the client subcommands that drive a
//! running meshd through its admin API (`meshd deploy`, `meshd apps`, ...).
//!
//! `meshd` without a subcommand, or `meshd serve`, is the daemon with its
//! flags (crate::cli); every other subcommand is one request to the admin
//! API, whose answer is printed readably (or as JSON with `--json`) and
//! turned into an exit code a script can use (see [`EXIT_CODES`]).

mod answer;
mod http;
mod mesh;
mod table;
mod upload;

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use http::{accept, parse, AdminClient, Answer, Failure, Payload, Verdict};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use upload::{ManifestChoice, Upload};

/// The exit codes of the client subcommands, for `--help` and README.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  meshd refused the change, or the app or version does not exist (422, 404,
     400, 413); the refusal's kind and message are printed on stderr
  2  usage error: bad arguments, or a local file that cannot be read
     (nothing was sent)
  3  cannot talk to the admin API: connection refused, timeout, a bad token
     (401), a server error (5xx), or an answer that is not the admin API's";

/// `meshd` as a whole: the daemon's flags, or a subcommand. Its help text
/// is the daemon's (crate::cli::Args) followed by the client's.
#[derive(Debug, Parser)]
#[command(
    name = "meshd",
    version,
    about = daemon_help().0,
    long_about = daemon_help().1,
    max_term_width = 100,
    args_conflicts_with_subcommands = true,
    subcommand_value_name = "COMMAND",
    after_help = EXIT_CODES
)]
struct CommandLine {
    #[command(subcommand)]
    command: Option<Command>,
    /// The daemon's flags, when no subcommand is given.
    #[command(flatten)]
    serve: crate::cli::Args,
}

/// The client subcommands alone: parsed without the daemon's flags, so
/// that the daemon's environment variables (MESHD_LISTEN, ...) are not read
/// and cannot make a client command fail.
#[derive(Debug, Parser)]
#[command(name = "meshd", max_term_width = 100)]
struct ClientLine {
    #[command(subcommand)]
    command: ClientCommand,
}

/// The daemon's about and long about, with a paragraph on the client.
fn daemon_help() -> (String, String) {
    use clap::CommandFactory;
    let daemon = <crate::cli::Args as CommandFactory>::command();
    let about = daemon
        .get_about()
        .map(ToString::to_string)
        .unwrap_or_default();
    let long_about = daemon
        .get_long_about()
        .map_or_else(|| about.clone(), ToString::to_string);
    let long_about = format!(
        "{long_about}\n\n\
         Without a subcommand, or as `meshd serve`, meshd is this daemon. The \
         other subcommands are the client of a running meshd's admin API \
         (--admin URL or MESHD_ADMIN, default http://127.0.0.1:9090): deploy, \
         list, roll back, remove, and run canaries. `meshd help COMMAND` \
         explains each."
    );
    (about, long_about)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (what `meshd` without a subcommand does).
    Serve(Box<crate::cli::Args>),
    #[command(flatten)]
    Client(Box<ClientCommand>),
}

/// What the command line asks for.
pub enum Invocation {
    /// Run the daemon with these flags.
    Serve(Box<crate::cli::Args>),
    /// Send one command to a running meshd.
    Client(Box<ClientCommand>),
}

/// Parses the process's arguments (exits on a usage error, with 2, or after
/// printing --help or --version).
pub fn parse_command_line() -> Invocation {
    parse_from(std::env::args_os().collect()).unwrap_or_else(|e| e.exit())
}

fn parse_from(args: Vec<OsString>) -> Result<Invocation, clap::Error> {
    // A client subcommand can only come first: daemon flags before a
    // subcommand are refused (args_conflicts_with_subcommands).
    let client = args
        .get(1)
        .and_then(|first| first.to_str())
        .is_some_and(|first| ClientLine::command().find_subcommand(first).is_some());
    if client {
        return ClientLine::try_parse_from(args)
            .map(|line| Invocation::Client(Box::new(line.command)));
    }
    let line = CommandLine::try_parse_from(args)?;
    Ok(match line.command {
        None => Invocation::Serve(Box::new(line.serve)),
        Some(Command::Serve(args)) => Invocation::Serve(args),
        Some(Command::Client(command)) => Invocation::Client(command),
    })
}

/// The client subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Upload an app (its .wasm, and its manifest if any) and make it live.
    ///
    /// meshd answers once the new version is live (or refused): it has been
    /// compiled, health-checked and switched to. A refused version changes
    /// nothing that serves.
    #[command(after_help = EXIT_CODES)]
    Deploy(DeployArgs),
    /// List the apps, or show one app in detail with its kept versions.
    ///
    /// The list's 2XX and 5XX count the requests of the live version and the
    /// canary together; `meshd apps NAME` shows each side.
    #[command(after_help = EXIT_CODES)]
    Apps(AppsArgs),
    /// Make the previous kept version of an app live again, or VERSION.
    #[command(after_help = EXIT_CODES)]
    Rollback(RollbackArgs),
    /// Remove an app: meshd drains its requests, then unmounts it.
    #[command(after_help = EXIT_CODES)]
    Rm(NameArgs),
    /// Start a canary: a new upload (FILE) or a kept version (--version)
    /// serves PERCENT of an app's requests, the live version the rest.
    #[command(after_help = EXIT_CODES)]
    Canary(CanaryArgs),
    /// Make an app's canary its live version, for all requests.
    #[command(after_help = EXIT_CODES)]
    Promote(NameArgs),
    /// Stop an app's canary: the live version serves all requests again.
    #[command(after_help = EXIT_CODES)]
    Abort(NameArgs),
    /// Publish an app to the mesh: every meshd node following it (--mesh)
    /// serves the new version.
    ///
    /// The .wasm goes to the mesh's object store under its SHA-256, and the
    /// app's desired state (code digest and manifest) to its key-value
    /// bucket. meshd answers once the desired state is stored; with --wait
    /// it waits until every live node serves the version, or one refuses it
    /// (exit 1, with that node's reason).
    #[command(after_help = EXIT_CODES)]
    Publish(mesh::PublishArgs),
    /// Restart meshd gracefully (as SIGUSR2): the binary now at its path
    /// takes over its sockets; the old process drains and exits.
    ///
    /// meshd answers once the new process serves (both pids are printed),
    /// or with why it did not take over (the old one keeps serving; exit
    /// 3 with meshd's reason). A restart already under way: exit 1.
    #[command(after_help = EXIT_CODES)]
    Restart(RestartArgs),
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub connection: Connection,
}

/// How to reach the admin API; every client subcommand has these.
#[derive(Debug, Args)]
#[command(next_help_heading = "Admin API")]
pub struct Connection {
    /// The admin API of meshd (its --admin address): http://HOST:PORT, or
    /// https:// behind a TLS proxy. A bare HOST:PORT means http.
    #[arg(
        long = "admin",
        env = "MESHD_ADMIN",
        default_value = "http://127.0.0.1:9090",
        value_name = "URL",
        value_parser = http::parse_admin_url
    )]
    pub admin: String,

    /// File holding the admin token (the one meshd's --admin-token-file
    /// holds); sent as `Authorization: Bearer TOKEN`. Without it no token is
    /// sent.
    #[arg(long, env = "MESHD_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM certificates to trust for an https:// admin URL instead of
    /// Mozilla's roots (e.g. the CA of a TLS proxy in front of the admin
    /// listener).
    #[arg(long, env = "MESHD_ADMIN_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Print the server's JSON answer as it came (also a refusal's), for
    /// scripts, instead of a readable summary.
    #[arg(long)]
    pub json: bool,

    /// How long to wait for the answer once the request is sent (a deploy
    /// waits for the compile and the health check).
    #[arg(long, env = "MESHD_ADMIN_TIMEOUT", default_value = "5m", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The app's component (.wasm).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The app's name (letters, digits, '-' and '_'; at most 64). [default:
    /// FILE's name without its extension]
    #[arg(long, value_name = "NAME", value_parser = parse_app_name)]
    pub name: Option<String>,

    #[command(flatten)]
    pub manifest: ManifestArgs,

    #[command(flatten)]
    pub connection: Connection,
}

/// Which manifest goes with an upload.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// The app's manifest (TOML). [default: FILE with .toml instead of .wasm,
    /// e.g. hello.toml beside hello.wasm, if that file exists; else none]
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// Send no manifest, even if one lies beside FILE.
    #[arg(long, conflicts_with = "manifest")]
    pub no_manifest: bool,
}

impl ManifestArgs {
    fn choice(&self) -> ManifestChoice {
        match (&self.manifest, self.no_manifest) {
            (Some(path), _) => ManifestChoice::Given(path.clone()),
            (None, true) => ManifestChoice::None,
            (None, false) => ManifestChoice::BesideTheWasm,
        }
    }
}

#[derive(Debug, Args)]
pub struct AppsArgs {
    /// Show this app in detail (with its kept versions) instead of the list.
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: Option<String>,

    /// Show the mesh instead of one node: the desired app set and every
    /// live node's view of it side by side, read from these NATS servers
    /// (comma-separated nats:// URLs).
    #[arg(long, value_name = "URLS")]
    pub mesh: Option<String>,

    #[command(flatten)]
    pub mesh_access: mesh::MeshAccess,

    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: String,

    /// The kept version to go to: its digest or its 12-digit id (see `meshd
    /// apps NAME`). [default: the version before the live one]
    #[arg(value_name = "VERSION", value_parser = parse_version)]
    pub version: Option<String>,

    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: String,

    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct CanaryArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: String,

    /// The canary's component (.wasm), uploaded like `meshd deploy` does.
    #[arg(
        value_name = "FILE",
        required_unless_present = "version",
        conflicts_with = "version"
    )]
    pub file: Option<PathBuf>,

    /// A kept version as the canary instead of an upload: its digest or its
    /// 12-digit id (see `meshd apps NAME`).
    #[arg(long, value_name = "DIGEST", value_parser = parse_version, conflicts_with_all = ["manifest", "no_manifest"])]
    pub version: Option<String>,

    /// Share of the requests the canary serves, 1 to 99.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u8).range(1..=99))]
    pub percent: u8,

    /// Requests with the same value of this header (e.g. x-user) always go
    /// to the same side.
    #[arg(long, value_name = "HEADER")]
    pub sticky_header: Option<String>,

    #[command(flatten)]
    pub manifest: ManifestArgs,

    #[command(flatten)]
    pub connection: Connection,
}

/// An app name as meshd accepts it (it also goes into URL paths unescaped).
fn parse_app_name(text: &str) -> Result<String, String> {
    let mut chars = text.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && text.len() <= 64;
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an app name: a letter or digit, then letters, digits, '-' or '_', at most 64 in all"
        ))
    }
}

/// A version: hex digits (a digest or its 12-digit id).
fn parse_version(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.len() <= 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "{text:?} is not a version: its digest or 12-digit id, in hex (see `meshd apps NAME`)"
        ))
    }
}

/// Runs a client subcommand; the exit code says how it went.
pub fn run(command: Box<ClientCommand>) -> ExitCode {
    let (action, result) = execute(*command);
    match result {
        Ok(()) => ExitCode::from(http::EXIT_OK),
        Err(failure) => {
            eprintln!("meshd: cannot {action}: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// What a command is doing, for its error message ("cannot deploy hello").
type Action = String;

fn execute(command: ClientCommand) -> (Action, Result<(), Failure>) {
    match command {
        ClientCommand::Deploy(args) => {
            let name = match &args.name {
                Some(name) => Ok(name.clone()),
                None => name_from_file(&args.file),
            };
            let action = format!("deploy {}", name.as_deref().unwrap_or("the app"));
            (action, name.and_then(|name| deploy(&args, &name)))
        }
        ClientCommand::Apps(args) => match (&args.mesh, &args.name) {
            (Some(servers), name) => (
                "show the mesh".to_owned(),
                mesh::show(
                    servers,
                    &args.mesh_access,
                    name.as_deref(),
                    args.connection.json,
                ),
            ),
            (None, Some(name)) => (format!("show app {name}"), show_app(&args.connection, name)),
            (None, None) => ("list the apps".to_owned(), list_apps(&args.connection)),
        },
        ClientCommand::Rollback(args) => (format!("roll back {}", args.name), rollback(&args)),
        ClientCommand::Rm(args) => (format!("remove {}", args.name), remove(&args)),
        ClientCommand::Canary(args) => (format!("start a canary of {}", args.name), canary(&args)),
        ClientCommand::Promote(args) => (
            format!("promote the canary of {}", args.name),
            change(&args, "promote", table::promoted),
        ),
        ClientCommand::Abort(args) => (
            format!("abort the canary of {}", args.name),
            change(&args, "abort", table::aborted),
        ),
        ClientCommand::Restart(args) => ("restart meshd".to_owned(), restart(&args.connection)),
        ClientCommand::Publish(args) => {
            let name = match &args.name {
                Some(name) => Ok(name.clone()),
                None => name_from_file(&args.file),
            };
            let action = format!("publish {}", name.as_deref().unwrap_or("the app"));
            (action, name.and_then(|name| mesh::publish(&args, &name)))
        }
    }
}

/// `--name`'s default: `hello.wasm` deploys `hello`.
fn name_from_file(file: &Path) -> Result<String, Failure> {
    let stem = file
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_app_name(&stem).map_err(|e| {
        Failure::Usage(format!(
            "the app is named after {} by default, but {e}; give one with --name",
            file.display()
        ))
    })
}

/// Checks the upload's files; says on stderr when a manifest was picked up
/// without being named, since it changes what gets deployed.
fn prepare(file: &Path, manifest: &ManifestArgs) -> Result<Upload, Failure> {
    let choice = manifest.choice();
    let upload = Upload::prepare(file, &choice)?;
    if let (ManifestChoice::BesideTheWasm, Some(found)) = (&choice, &upload.manifest) {
        eprintln!(
            "meshd: sending the manifest {} with {} (--no-manifest leaves it out)",
            found.path.display(),
            file.display()
        );
    }
    Ok(upload)
}

fn connect(connection: &Connection) -> Result<AdminClient, Failure> {
    let token = match &connection.token_file {
        Some(path) => Some(http::read_token(path)?),
        None => None,
    };
    let roots = match &connection.ca_file {
        Some(path) => Some(http::read_ca_file(path)?),
        None => None,
    };
    Ok(AdminClient::new(
        connection.admin.clone(),
        token,
        connection.timeout,
        roots,
    ))
}

/// Prints a success's (or a JSON refusal's) body as it came, for `--json`.
fn print_json(answer: &Answer) {
    let printable = match http::verdict(answer.status) {
        Verdict::Success => true,
        Verdict::Refused => serde_json::from_str::<serde_json::Value>(&answer.body).is_ok(),
        Verdict::Unusable => false,
    };
    if printable {
        print!("{}", answer.body);
        if !answer.body.ends_with('\n') {
            println!();
        }
    }
}

/// Accepts an answer, printing it as JSON when asked; `Ok(None)` when it
/// was printed so.
fn answered(
    answer: Answer,
    client: &AdminClient,
    connection: &Connection,
    subject: &str,
) -> Result<Option<String>, Failure> {
    if connection.json {
        print_json(&answer);
        accept(answer, client.base(), subject)?;
        return Ok(None);
    }
    accept(answer, client.base(), subject).map(Some)
}

fn deploy(args: &DeployArgs, name: &str) -> Result<(), Failure> {
    let upload = prepare(&args.file, &args.manifest)?;
    let client = connect(&args.connection)?;
    let answer = client.put(&app_path(name), Payload::Upload(&upload))?;
    let created = answer.status == 201;
    if let Some(body) = answered(answer, &client, &args.connection, &format!("app {name}"))? {
        let app: answer::App = parse(&body, client.base())?;
        print!("{}", table::deployed(&app, created));
    }
    Ok(())
}

fn restart(connection: &Connection) -> Result<(), Failure> {
    let client = connect(connection)?;
    let answer = client.post("/v1/restart", &[], Payload::Empty)?;
    if let Some(body) = answered(answer, &client, connection, "the restart")? {
        let done: answer::Restarted = parse(&body, client.base())?;
        println!(
            "restarted: pid {} serves; pid {} drains and exits",
            done.new_pid, done.old_pid
        );
    }
    Ok(())
}

fn list_apps(connection: &Connection) -> Result<(), Failure> {
    let client = connect(connection)?;
    let answer = client.get("/v1/apps")?;
    if let Some(body) = answered(answer, &client, connection, "the apps")? {
        let list: answer::AppList = parse(&body, client.base())?;
        print!("{}", table::apps_table(&list.apps));
    }
    Ok(())
}

fn show_app(connection: &Connection, name: &str) -> Result<(), Failure> {
    let client = connect(connection)?;
    let answer = client.get(&app_path(name))?;
    if let Some(body) = answered(answer, &client, connection, &format!("app {name}"))? {
        let app: answer::App = parse(&body, client.base())?;
        print!("{}", table::app_detail(&app));
    }
    Ok(())
}

fn rollback(args: &RollbackArgs) -> Result<(), Failure> {
    let client = connect(&args.connection)?;
    let payload = match &args.version {
        Some(version) => Payload::Json(serde_json::json!({ "version": version })),
        None => Payload::Empty,
    };
    let path = format!("{}/rollback", app_path(&args.name));
    let answer = client.post(&path, &[], payload)?;
    let subject = format!("app {}", args.name);
    if let Some(body) = answered(answer, &client, &args.connection, &subject)? {
        let app: answer::App = parse(&body, client.base())?;
        print!("{}", table::rolled_back(&app));
    }
    Ok(())
}

fn remove(args: &NameArgs) -> Result<(), Failure> {
    let client = connect(&args.connection)?;
    let answer = client.delete(&app_path(&args.name))?;
    let subject = format!("app {}", args.name);
    if let Some(body) = answered(answer, &client, &args.connection, &subject)? {
        let removed: answer::Removed = parse(&body, client.base())?;
        println!("removed {}", removed.removed);
    }
    Ok(())
}

fn canary(args: &CanaryArgs) -> Result<(), Failure> {
    let path = format!("{}/canary", app_path(&args.name));
    let answer = match (&args.file, &args.version) {
        (Some(file), _) => {
            let upload = prepare(file, &args.manifest)?;
            let client = connect(&args.connection)?;
            let mut query = vec![("percent", args.percent.to_string())];
            if let Some(header) = &args.sticky_header {
                query.push(("sticky_header", header.clone()));
            }
            (
                client.post(&path, &query, Payload::Upload(&upload))?,
                client,
            )
        }
        (None, Some(version)) => {
            let client = connect(&args.connection)?;
            let mut body = serde_json::json!({ "version": version, "percent": args.percent });
            if let Some(header) = &args.sticky_header {
                body["sticky_header"] = header.clone().into();
            }
            (client.post(&path, &[], Payload::Json(body))?, client)
        }
        // clap requires one of them.
        (None, None) => {
            return Err(Failure::Usage(
                "give the canary's FILE or --version".to_owned(),
            ))
        }
    };
    let (answer, client) = answer;
    let subject = format!("app {}", args.name);
    if let Some(body) = answered(answer, &client, &args.connection, &subject)? {
        let app: answer::App = parse(&body, client.base())?;
        print!("{}", table::canary_started(&app));
    }
    Ok(())
}

/// `promote` and `abort`: a POST without a body, answered with the app.
fn change(args: &NameArgs, verb: &str, summary: fn(&answer::App) -> String) -> Result<(), Failure> {
    let client = connect(&args.connection)?;
    let path = format!("{}/{verb}", app_path(&args.name));
    let answer = client.post(&path, &[], Payload::Empty)?;
    let subject = format!("app {}", args.name);
    if let Some(body) = answered(answer, &client, &args.connection, &subject)? {
        let app: answer::App = parse(&body, client.base())?;
        print!("{}", summary(&app));
    }
    Ok(())
}

/// Names are checked by `parse_app_name`, so they need no escaping.
fn app_path(name: &str) -> String {
    format!("/v1/apps/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_from(args: &[&str]) -> Result<Invocation, clap::Error> {
        super::parse_from(args.iter().map(OsString::from).collect())
    }

    fn client(args: &[&str]) -> ClientCommand {
        match parse_from(args) {
            Ok(Invocation::Client(command)) => *command,
            Ok(Invocation::Serve(_)) => panic!("{args:?} parsed as the daemon"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn usage_error(args: &[&str]) -> clap::Error {
        match parse_from(args) {
            Err(e) => e,
            Ok(_) => panic!("{args:?} parsed"),
        }
    }

    #[test]
    fn the_bare_command_and_serve_are_the_daemon() {
        for args in [
            &["meshd", "--apps", "/srv/apps", "--listen", "127.0.0.1:0"][..],
            &[
                "meshd",
                "serve",
                "--apps",
                "/srv/apps",
                "--listen",
                "127.0.0.1:0",
            ][..],
        ] {
            match parse_from(args) {
                Ok(Invocation::Serve(serve)) => {
                    assert_eq!(serve.apps, Path::new("/srv/apps"));
                    assert_eq!(serve.plain_listen().map(|a| a.port()), Some(0));
                }
                Ok(Invocation::Client(_)) => panic!("{args:?} parsed as a client command"),
                Err(e) => panic!("{args:?}: {e}"),
            }
        }
        assert!(matches!(parse_from(&["meshd"]), Ok(Invocation::Serve(_))));
    }

    #[test]
    fn daemon_flags_do_not_mix_with_client_commands() {
        let error = usage_error(&["meshd", "--apps", "/srv", "apps"]);
        assert_eq!(error.exit_code(), 2);
        let error = usage_error(&["meshd", "deploy", "x.wasm", "--listen", "127.0.0.1:0"]);
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn deploy_takes_a_file_a_name_and_a_manifest() {
        let ClientCommand::Deploy(args) = client(&[
            "meshd",
            "deploy",
            "build/hello.wasm",
            "--name",
            "hi",
            "--manifest",
            "m.toml",
            "--admin",
            "10.0.0.1:9090",
            "--token-file",
            "/etc/meshd/token",
            "--json",
        ]) else {
            panic!("not deploy")
        };
        assert_eq!(args.file, Path::new("build/hello.wasm"));
        assert_eq!(args.name.as_deref(), Some("hi"));
        assert_eq!(
            args.manifest.choice(),
            ManifestChoice::Given("m.toml".into())
        );
        assert_eq!(args.connection.admin, "http://10.0.0.1:9090");
        assert_eq!(
            args.connection.token_file.as_deref(),
            Some(Path::new("/etc/meshd/token"))
        );
        assert!(args.connection.json);

        let ClientCommand::Deploy(args) = client(&["meshd", "deploy", "hello.wasm"]) else {
            panic!("not deploy")
        };
        assert_eq!(args.name, None);
        assert_eq!(args.manifest.choice(), ManifestChoice::BesideTheWasm);
        assert!(!args.connection.json);
        assert_eq!(args.connection.timeout, Duration::from_secs(300));

        let ClientCommand::Deploy(args) =
            client(&["meshd", "deploy", "hello.wasm", "--no-manifest"])
        else {
            panic!("not deploy")
        };
        assert_eq!(args.manifest.choice(), ManifestChoice::None);

        usage_error(&["meshd", "deploy"]);
        usage_error(&[
            "meshd",
            "deploy",
            "a.wasm",
            "--manifest",
            "m",
            "--no-manifest",
        ]);
        usage_error(&["meshd", "deploy", "a.wasm", "--name", "../etc"]);
        usage_error(&["meshd", "deploy", "a.wasm", "--admin", "ftp://x"]);
    }

    #[test]
    fn the_default_name_is_the_file_stem() {
        assert_eq!(
            name_from_file(Path::new("dir/hello.wasm")).unwrap(),
            "hello"
        );
        assert_eq!(
            name_from_file(Path::new("my_app-2.wasm")).unwrap(),
            "my_app-2"
        );
        let failure = name_from_file(Path::new("hello world.wasm")).unwrap_err();
        assert_eq!(failure.exit_code(), http::EXIT_USAGE);
        assert!(failure.to_string().contains("--name"), "{failure}");
    }

    #[test]
    fn canary_takes_a_file_or_a_kept_version() {
        let ClientCommand::Canary(args) = client(&[
            "meshd",
            "canary",
            "hello",
            "new.wasm",
            "--percent",
            "10",
            "--sticky-header",
            "x-user",
        ]) else {
            panic!("not canary")
        };
        assert_eq!(args.name, "hello");
        assert_eq!(args.file.as_deref(), Some(Path::new("new.wasm")));
        assert_eq!(args.percent, 10);
        assert_eq!(args.sticky_header.as_deref(), Some("x-user"));

        let ClientCommand::Canary(args) = client(&[
            "meshd",
            "canary",
            "hello",
            "--version",
            "3F2A1B9C0D1E",
            "--percent",
            "50",
        ]) else {
            panic!("not canary")
        };
        assert_eq!(args.file, None);
        assert_eq!(args.version.as_deref(), Some("3f2a1b9c0d1e"));

        // Neither, both, no percent, a percent out of 1..=99.
        usage_error(&["meshd", "canary", "hello", "--percent", "10"]);
        usage_error(&[
            "meshd",
            "canary",
            "hello",
            "a.wasm",
            "--version",
            "abc",
            "--percent",
            "10",
        ]);
        usage_error(&["meshd", "canary", "hello", "a.wasm"]);
        usage_error(&["meshd", "canary", "hello", "a.wasm", "--percent", "0"]);
        usage_error(&["meshd", "canary", "hello", "a.wasm", "--percent", "100"]);
        usage_error(&[
            "meshd",
            "canary",
            "hello",
            "--version",
            "abc",
            "--manifest",
            "m",
            "--percent",
            "5",
        ]);
    }

    #[test]
    fn the_other_commands() {
        let ClientCommand::Apps(args) = client(&["meshd", "apps"]) else {
            panic!("not apps")
        };
        assert_eq!(args.name, None);
        assert_eq!(args.connection.admin, "http://127.0.0.1:9090");
        let ClientCommand::Apps(args) = client(&["meshd", "apps", "hello"]) else {
            panic!("not apps")
        };
        assert_eq!(args.name.as_deref(), Some("hello"));

        let ClientCommand::Rollback(args) = client(&["meshd", "rollback", "hello"]) else {
            panic!("not rollback")
        };
        assert_eq!(args.version, None);
        let ClientCommand::Rollback(args) = client(&["meshd", "rollback", "hello", "3f2a1b9c0d1e"])
        else {
            panic!("not rollback")
        };
        assert_eq!(args.version.as_deref(), Some("3f2a1b9c0d1e"));
        usage_error(&["meshd", "rollback", "hello", "not-hex"]);

        assert!(
            matches!(client(&["meshd", "rm", "hello"]), ClientCommand::Rm(a) if a.name == "hello")
        );
        assert!(matches!(
            client(&["meshd", "promote", "hello"]),
            ClientCommand::Promote(_)
        ));
        assert!(matches!(
            client(&["meshd", "abort", "hello"]),
            ClientCommand::Abort(_)
        ));
        usage_error(&["meshd", "rm"]);
        usage_error(&["meshd", "rm", "a/b"]);
    }

    #[test]
    fn app_names() {
        for good in ["a", "hello", "A-1_b", &"x".repeat(64)] {
            assert!(parse_app_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "_a", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(parse_app_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_lines_are_consistent() {
        CommandLine::command().debug_assert();
        ClientLine::command().debug_assert();
    }

    #[test]
    fn the_help_explains_the_daemon_and_the_client() {
        let help = CommandLine::command().render_long_help().to_string();
        assert!(
            help.contains("Every NAME.wasm in the apps directory"),
            "{help}"
        );
        assert!(help.contains("--apps <DIR>"), "{help}");
        for command in [
            "serve", "deploy", "apps", "rollback", "rm", "canary", "promote", "abort",
        ] {
            assert!(
                help.contains(&format!("\n  {command} ")),
                "{command}: {help}"
            );
        }
        assert!(help.contains("Exit codes:"), "{help}");
    }
}
