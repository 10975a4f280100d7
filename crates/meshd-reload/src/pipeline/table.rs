//! Who gets which route and `[files]` directory.
//!
//! Decided by app name: an app that held a route (or a directory) after the
//! previous change (the [`Holdings`]; at start-up, those saved by the last
//! run) and still asks for it keeps it, however often its own code changes
//! and across restarts; any other app asking for it (or, for a directory,
//! for one inside or around it) is refused, every time, with an error naming
//! both apps. Between apps that held neither, the first by name wins.
//!
//! A route is a host and a path prefix: `/api` on `a.example.com`, on
//! `b.example.com`, on `*.example.com` and on any host are four routes that
//! never conflict; `Shop.Example.com/api/` and `shop.example.com/api` are
//! one route.

use super::prepare::Deployed;
use crate::holdings::Holdings;
use meshd_registry::Refused;
use meshd_routes::Route;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

/// Where each app ends up.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// The option each placed app is mounted with (an index into its
    /// options). Apps not in it are not mounted.
    pub chosen: BTreeMap<String, usize>,
    /// Why an app's first option was not placed (it may still be mounted
    /// with a later one).
    pub refused: BTreeMap<String, Refused>,
}

/// Places every app of `wants`, each with the first of its options (in
/// order of preference: a new version, then the one it has) that takes no
/// route or directory of another app.
pub(crate) fn place(wants: &BTreeMap<String, Vec<&Deployed>>, holdings: &Holdings) -> Placement {
    let mut held_routes: BTreeMap<Route, &str> = BTreeMap::new();
    let mut held_dirs: Vec<(PathBuf, &str)> = Vec::new();
    for (name, options) in wants {
        for option in options {
            if holdings.holds_route(name, &option.route.to_string()) {
                held_routes.insert(option.route.clone(), name);
            }
            if let Some(dir) = option
                .files_dir()
                .filter(|dir| holdings.holds_dir(name, dir))
            {
                held_dirs.push((dir, name));
            }
        }
    }
    // A set, not a scan per app: with thousands of apps in one change (a
    // start-up), a scan of every holding per app was quadratic.
    let holders: HashSet<&str> = held_routes
        .values()
        .copied()
        .chain(held_dirs.iter().map(|(_, holder)| *holder))
        .collect();
    let mut order: Vec<&String> = wants.keys().collect();
    // Holders first, then the rest by name (BTreeMap order, stable sort).
    order.sort_by_key(|name| !holders.contains(name.as_str()));
    let label_of = |holder: &str, route: Option<&Route>| {
        let options = wants.get(holder).map(Vec::as_slice).unwrap_or_default();
        options
            .iter()
            .find(|o| route.is_none_or(|r| o.route == *r))
            .or(options.first())
            .map_or_else(String::new, |o| o.label.clone())
    };

    let mut placement = Placement::default();
    let mut owners: BTreeMap<Route, (&str, &str)> = BTreeMap::new();
    let mut dirs: Vec<(PathBuf, &str, &str)> = Vec::new();
    for name in order {
        let mut first_refusal = None;
        for (i, d) in wants[name].iter().enumerate() {
            let refusal = if let Some(holder) = held_routes
                .get(&d.route)
                .filter(|holder| **holder != name.as_str())
            {
                Some(Refused::RouteConflict {
                    message: format!(
                        "route {} asked for by app {name} ({}) is held by app {holder} ({})",
                        d.route,
                        d.label,
                        label_of(holder, Some(&d.route)),
                    ),
                    holder: holder.to_string(),
                })
            } else {
                let dir = d.files_dir();
                let overlaps = |other: &PathBuf| {
                    dir.as_ref()
                        .is_some_and(|dir| other.starts_with(dir) || dir.starts_with(other))
                };
                // Only an option with a directory scans the others' (an
                // app without one would make the pass quadratic for nothing).
                let (held_overlap, placed_overlap) = match dir {
                    Some(_) => (
                        held_dirs
                            .iter()
                            .find(|(other, holder)| overlaps(other) && *holder != name.as_str()),
                        dirs.iter()
                            .find(|(other, owner, _)| overlaps(other) && *owner != name.as_str()),
                    ),
                    None => (None, None),
                };
                if let Some((held, holder)) = held_overlap {
                    Some(Refused::DirConflict {
                        message: format!(
                            "[files] dir of app {name} ({}) overlaps {}, the directory held by app {holder} ({})",
                            d.label,
                            held.display(),
                            label_of(holder, None),
                        ),
                        holder: holder.to_string(),
                    })
                } else if let Some((other, owner, owner_label)) = placed_overlap {
                    Some(Refused::DirConflict {
                        message: format!(
                            "[files] dir of {} overlaps {}, the directory of {owner_label}",
                            d.label,
                            other.display(),
                        ),
                        holder: owner.to_string(),
                    })
                } else if let Some((owner, owner_label)) = owners.get(&d.route) {
                    Some(Refused::RouteConflict {
                        message: format!(
                            "route {} of {} is already taken by {owner_label}",
                            d.route, d.label,
                        ),
                        holder: owner.to_string(),
                    })
                } else {
                    None
                }
            };
            match refusal {
                Some(refusal) => {
                    first_refusal.get_or_insert(refusal);
                }
                None => {
                    owners.insert(d.route.clone(), (name, &d.label));
                    if let Some(dir) = d.files_dir() {
                        dirs.push((dir, name, &d.label));
                    }
                    placement.chosen.insert(name.clone(), i);
                    break;
                }
            }
        }
        if let Some(refusal) = first_refusal {
            placement.refused.insert(name.clone(), refusal);
        }
    }
    placement
}

/// Who holds what once `mounted` (by app name) is the table.
pub(crate) fn holdings_of<'a>(
    mounted: impl Iterator<Item = (&'a String, &'a Deployed)>,
) -> Holdings {
    let mut holdings = Holdings::default();
    for (name, d) in mounted {
        holdings.add(name, &d.route.to_string(), d.files_dir().as_deref());
    }
    holdings
}
