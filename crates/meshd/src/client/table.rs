//! Readable output of the client: the `apps` table, one app in detail, and
//! the one-line summaries of changes. (`--json` prints the server's answer
//! instead.)

use super::answer::{App, Canary, Kept, Version};
use std::fmt::Write as _;
use std::io::Write as _;

/// Widest a cell of these columns may be; longer text is cut with "…".
const MAX_NAME: usize = 24;
/// Routes may start with a host (`tenant-42.shop.example.com/api`): wide
/// enough that the path after a typical host is still shown.
const MAX_ROUTE: usize = 64;
const MAX_ERROR: usize = 60;

/// `meshd apps`: one line per app.
pub fn apps_table(apps: &[App]) -> String {
    if apps.is_empty() {
        return "no apps\n".to_owned();
    }
    let mut rows = vec![[
        "NAME",
        "ROUTE",
        "ORIGIN",
        "STATE",
        "VERSION",
        "CANARY",
        "IN-FLIGHT",
        "2XX",
        "5XX",
        "LAST-ERROR",
    ]
    .map(str::to_owned)];
    for app in apps {
        // Requests of both sides while a canary runs; `apps NAME` splits them.
        let requests = app
            .version
            .iter()
            .chain(app.canary.iter().map(|canary| &canary.version))
            .fold(Default::default(), |sum: super::answer::Requests, v| {
                sum.plus(v.requests)
            });
        let canary = app.canary.as_ref().map_or_else(
            || "-".to_owned(),
            |c| format!("{} {}%", c.version.short_id(), c.percent),
        );
        let last_error = app.last_error.as_ref().map_or_else(
            || "-".to_owned(),
            |e| {
                cut(
                    &format!("{}: {}", e.kind, first_line(&e.message)),
                    MAX_ERROR,
                )
            },
        );
        rows.push([
            cut(&app.name, MAX_NAME),
            cut(or_dash(&app.route), MAX_ROUTE),
            or_dash(&app.origin).to_owned(),
            or_dash(&app.state).to_owned(),
            app.version
                .as_ref()
                .map_or("-", Version::short_id)
                .to_owned(),
            canary,
            app.in_flight.to_string(),
            requests.c2xx.to_string(),
            requests.c5xx.to_string(),
            last_error,
        ]);
    }
    aligned(rows.iter().map(|row| row.as_slice()))
}

/// `meshd apps NAME`: everything the server said about one app.
pub fn app_detail(app: &App) -> String {
    let mut out = String::new();
    let mut field = |label: &str, value: &str| {
        let _ = writeln!(out, "{:<12}{value}", format!("{label}:"));
    };
    field("name", &app.name);
    field("route", or_dash(&app.route));
    field("origin", or_dash(&app.origin));
    field("state", or_dash(&app.state));
    field("in flight", &app.in_flight.to_string());
    match &app.version {
        Some(version) => field(
            "live",
            &format!("{}, {}", version.short_id(), version_line(version)),
        ),
        None => field("live", "none"),
    }
    if let Some(canary) = &app.canary {
        field("canary", &canary_line(canary));
    }
    match &app.last_error {
        Some(error) => {
            let at = error.at.as_deref().map(|at| format!(" at {at}"));
            field(
                "last error",
                &format!(
                    "{}{}: {}",
                    error.kind,
                    at.unwrap_or_default(),
                    error.message
                ),
            );
        }
        None => field("last error", "none"),
    }
    if app.kept.is_empty() {
        out.push_str("kept versions: none\n");
    } else {
        out.push_str("kept versions (newest first):\n");
        out.push_str(&kept_table(&app.kept));
    }
    out
}

fn kept_table(kept: &[Kept]) -> String {
    let mut rows =
        vec![["  VERSION", "DEPLOYED", "ORIGIN", "MANIFEST", "DIGEST", ""].map(str::to_owned)];
    for version in kept {
        rows.push([
            format!("  {}", version.short_id()),
            version
                .deployed_at
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
            or_dash(&version.origin).to_owned(),
            version
                .manifest
                .as_deref()
                .map_or("-", |m| m.get(..12).unwrap_or(m))
                .to_owned(),
            version.digest.clone(),
            if version.live { "live" } else { "" }.to_owned(),
        ]);
    }
    aligned(rows.iter().map(|row| row.as_slice()))
}

/// A version's when, load and requests by class, on one line.
fn version_line(version: &Version) -> String {
    let r = &version.requests;
    format!(
        "deployed {}, {} in flight, requests: {} 2xx, {} 4xx, {} 5xx ({} in all)",
        version.deployed_at.as_deref().unwrap_or("-"),
        version.in_flight,
        r.c2xx,
        r.c4xx,
        r.c5xx,
        r.total(),
    )
}

fn canary_line(canary: &Canary) -> String {
    let sticky = canary
        .sticky_header
        .as_deref()
        .map(|h| format!(", sticky on header {h}"))
        .unwrap_or_default();
    format!(
        "{} on {}% of requests{sticky}, {}",
        canary.version.short_id(),
        canary.percent,
        version_line(&canary.version)
    )
}

/// `deploy`: what is live now.
pub fn deployed(app: &App, created: bool) -> String {
    let at = or_dash(&app.route);
    match (&app.version, created) {
        (Some(version), true) => format!(
            "deployed {}: version {} is live at {at}\n",
            app.name,
            version.short_id()
        ),
        (Some(version), false) => format!(
            "{}: version {} was already live at {at} (unchanged)\n",
            app.name,
            version.short_id()
        ),
        (None, _) => format!("deployed {}: {}\n", app.name, no_live_version(app)),
    }
}

pub fn rolled_back(app: &App) -> String {
    format!("rolled back {}: {}\n", app.name, live_version(app))
}

pub fn canary_started(app: &App) -> String {
    match (&app.canary, &app.version) {
        (Some(canary), Some(live)) => format!(
            "canary of {}: version {} serves {}% of requests, version {} the rest\n",
            app.name,
            canary.version.short_id(),
            canary.percent,
            live.short_id()
        ),
        _ => format!(
            "{}: no canary is running; {}\n",
            app.name,
            live_version(app)
        ),
    }
}

pub fn promoted(app: &App) -> String {
    format!(
        "promoted the canary of {}: {}, for all requests\n",
        app.name,
        live_version(app)
    )
}

pub fn aborted(app: &App) -> String {
    format!(
        "stopped the canary of {}: {}, for all requests\n",
        app.name,
        live_version(app)
    )
}

/// "version ID is live", or why there is none.
fn live_version(app: &App) -> String {
    match &app.version {
        Some(version) => format!("version {} is live", version.short_id()),
        None => no_live_version(app),
    }
}

fn no_live_version(app: &App) -> String {
    format!(
        "no version is live (state {}; see `meshd apps {}`)",
        or_dash(&app.state),
        app.name
    )
}

/// Columns separated by two spaces, each as wide as its widest cell.
fn aligned<'a>(rows: impl Iterator<Item = &'a [String]>) -> String {
    let mut writer = tabwriter::TabWriter::new(Vec::new()).padding(2);
    for row in rows {
        // A tab inside a cell would start a column of its own.
        let cells: Vec<String> = row.iter().map(|cell| cell.replace('\t', " ")).collect();
        let _ = writeln!(writer, "{}", cells.join("\t").trim_end());
    }
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|line| format!("{}\n", line.trim_end()))
        .collect()
}

/// At most `max` characters, the last one "…" when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::super::answer::{LastError, Requests};
    use super::*;

    fn version(id: &str, c2xx: u64, c5xx: u64) -> Version {
        Version {
            digest: format!("{id}{}", "0".repeat(52)),
            id: id.to_owned(),
            deployed_at: Some("2026-11-29T12:00:00Z".to_owned()),
            in_flight: 0,
            requests: Requests {
                c2xx,
                c5xx,
                ..Requests::default()
            },
        }
    }

    fn hello() -> App {
        App {
            name: "hello".to_owned(),
            route: "/hello".to_owned(),
            origin: "api".to_owned(),
            state: "live".to_owned(),
            version: Some(version("3f2a1b9c0d1e", 5, 1)),
            canary: Some(Canary {
                version: version("9a8b7c6d5e4f", 2, 3),
                percent: 10,
                sticky_header: None,
            }),
            in_flight: 4,
            ..App::default()
        }
    }

    #[test]
    fn the_table_has_a_header_and_aligned_columns() {
        let refused = App {
            name: "a-much-longer-app-name-than-the-column-allows".to_owned(),
            route: "/b".to_owned(),
            origin: "dir".to_owned(),
            state: "refused".to_owned(),
            last_error: Some(LastError {
                kind: "health_check".to_owned(),
                message: format!("GET /health answered 500\n{}", "x".repeat(100)),
                at: None,
            }),
            ..App::default()
        };
        let table = apps_table(&[hello(), refused]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NAME",
                "ROUTE",
                "ORIGIN",
                "STATE",
                "VERSION",
                "CANARY",
                "IN-FLIGHT",
                "2XX",
                "5XX",
                "LAST-ERROR"
            ]
        );
        // Requests of the live side and the canary side together.
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "hello",
                "/hello",
                "api",
                "live",
                "3f2a1b9c0d1e",
                "9a8b7c6d5e4f",
                "10%",
                "4",
                "7",
                "4",
                "-"
            ]
        );
        // Every column starts at the same place on every line.
        let column = |line: &str, text: &str| line[..line.find(text).unwrap()].chars().count();
        let route_at = column(lines[0], "ROUTE");
        assert_eq!(column(lines[1], "/hello"), route_at);
        assert_eq!(column(lines[2], "/b"), route_at);
        // A long name is cut; only the first line of an error, cut too.
        assert!(lines[2].starts_with("a-much-longer-app-name-…"), "{table}");
        assert!(
            lines[2].ends_with("health_check: GET /health answered 500"),
            "{table}"
        );
        assert!(!table.contains("xxx"), "{table}");
    }

    #[test]
    fn host_routes_are_shown_whole() {
        let shop = App {
            route: "tenant-4242.customers.shop.example.com/api/v1".to_owned(),
            ..hello()
        };
        let table = apps_table(&[shop]);
        let row = table.lines().nth(1).expect("a row");
        assert_eq!(
            row.split_whitespace().nth(1),
            Some("tenant-4242.customers.shop.example.com/api/v1"),
            "{table}"
        );
    }

    #[test]
    fn an_empty_list_says_so() {
        assert_eq!(apps_table(&[]), "no apps\n");
    }

    #[test]
    fn the_detail_shows_both_sides_and_the_kept_versions() {
        let mut app = hello();
        app.kept = vec![
            Kept {
                digest: "9a8b7c6d5e4f".to_owned() + &"0".repeat(52),
                id: "9a8b7c6d5e4f".to_owned(),
                manifest: None,
                deployed_at: Some("2026-11-29T12:05:00Z".to_owned()),
                origin: "api".to_owned(),
                live: false,
            },
            Kept {
                digest: "3f2a1b9c0d1e".to_owned() + &"0".repeat(52),
                id: "3f2a1b9c0d1e".to_owned(),
                manifest: Some("ab".repeat(32)),
                deployed_at: Some("2026-11-29T12:00:00Z".to_owned()),
                origin: "api".to_owned(),
                live: true,
            },
        ];
        let detail = app_detail(&app);
        assert!(detail.contains("name:       hello\n"), "{detail}");
        assert!(
            detail.contains("live:       3f2a1b9c0d1e, deployed 2026-11-29T12:00:00Z, 0 in flight, requests: 5 2xx, 0 4xx, 1 5xx (6 in all)"),
            "{detail}"
        );
        assert!(
            detail.contains("canary:     9a8b7c6d5e4f on 10% of requests, deployed"),
            "{detail}"
        );
        assert!(detail.contains("last error: none"), "{detail}");
        let kept: Vec<&str> = detail
            .lines()
            .skip_while(|l| !l.starts_with("kept versions"))
            .skip(1)
            .collect();
        assert_eq!(kept.len(), 3, "{detail}");
        assert!(kept[0].trim_start().starts_with("VERSION"), "{detail}");
        assert!(kept[1].trim_start().starts_with("9a8b7c6d5e4f"), "{detail}");
        assert!(kept[2].contains("abababababab"), "{detail}");
        assert!(kept[2].ends_with("live"), "{detail}");
        assert!(!kept[1].ends_with("live"), "{detail}");
    }

    #[test]
    fn summaries_name_the_app_and_version() {
        let app = hello();
        assert_eq!(
            deployed(&app, true),
            "deployed hello: version 3f2a1b9c0d1e is live at /hello\n"
        );
        assert!(deployed(&app, false).contains("(unchanged)"));
        assert_eq!(
            promoted(&app),
            "promoted the canary of hello: version 3f2a1b9c0d1e is live, for all requests\n"
        );
        let loading = App {
            name: "slow".to_owned(),
            state: "loading".to_owned(),
            ..App::default()
        };
        assert_eq!(
            deployed(&loading, true),
            "deployed slow: no version is live (state loading; see `meshd apps slow`)\n"
        );
        assert_eq!(
            canary_started(&loading),
            "slow: no canary is running; no version is live (state loading; see `meshd apps slow`)\n"
        );
        assert_eq!(
            canary_started(&app),
            "canary of hello: version 9a8b7c6d5e4f serves 10% of requests, version 3f2a1b9c0d1e the rest\n"
        );
    }

    #[test]
    fn cut_counts_characters() {
        assert_eq!(cut("hello", 5), "hello");
        assert_eq!(cut("hello!", 5), "hell…");
        assert_eq!(cut("ééééé", 5), "ééééé");
    }
}
