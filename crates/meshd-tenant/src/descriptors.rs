//! Budgets of open descriptors: the files and directories a guest opens
//! under its `[files]` dir, and its outbound connections. Each is one
//! descriptor of meshd's process, and the process has a fixed number
//! (`RLIMIT_NOFILE`): without a budget one app could open them all, and then
//! meshd could not accept a connection or open a file for anyone.
//!
//! Every descriptor a guest holds counts three times: against its request
//! (`--max-request-descriptors`), against its app, all its requests and
//! versions together (`--max-app-descriptors`), and against every guest of
//! the daemon (`--max-guest-descriptors`, sized from the process's limit).
//! Past any of them the guest's open or request fails with an error (the
//! filesystem's `quota`, outbound HTTP's `connection-refused`); meshd goes on.
//!
//! Files are counted by wrapping wasi:filesystem's `open-at` and the drop
//! of a `descriptor` (see [`add_to_linker`]): the count follows what the
//! guest holds, and everything it still holds is given back when its Store
//! is dropped.

use crate::host::Host;
use crate::in_flight::{InFlight, InFlightGuard};
use std::fmt;
use std::sync::Arc;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};

/// The wasi:filesystem interface meshd links (wasmtime-wasi 48's version).
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// The limits, from the daemon's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimits {
    /// Most descriptors one request (one instance) may hold.
    pub per_request: u32,
    /// Most descriptors one app's requests may hold together.
    pub per_app: u32,
    /// Most descriptors all guests of the daemon may hold together.
    pub all_guests: u32,
}

impl Default for DescriptorLimits {
    /// meshd's defaults (its flags'): 256 per request, 1024 per app, 4096
    /// for all guests.
    fn default() -> Self {
        DescriptorLimits {
            per_request: 256,
            per_app: 1024,
            all_guests: 4096,
        }
    }
}

/// One Store's budget: its own count, its app's and the daemon's.
#[derive(Clone)]
pub(crate) struct DescriptorBudget {
    limits: DescriptorLimits,
    request: Arc<InFlight>,
    app: Arc<InFlight>,
    daemon: Arc<InFlight>,
}

/// One open descriptor's place in each count; dropping it gives them back.
pub(crate) struct DescriptorTicket {
    _request: InFlightGuard,
    _app: InFlightGuard,
    _daemon: InFlightGuard,
}

/// Which budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exhausted {
    Request(u32),
    App(u32),
    Daemon(u32),
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exhausted::Request(n) => write!(
                f,
                "the request holds {n} descriptors, its limit (--max-request-descriptors)"
            ),
            Exhausted::App(n) => write!(
                f,
                "the app's requests hold {n} descriptors, its limit (--max-app-descriptors)"
            ),
            Exhausted::Daemon(n) => write!(
                f,
                "all guests together hold {n} descriptors, meshd's limit (--max-guest-descriptors)"
            ),
        }
    }
}

impl DescriptorBudget {
    /// A fresh request's budget within `app`'s and the daemon's counts.
    pub(crate) fn new(
        limits: DescriptorLimits,
        app: &Arc<InFlight>,
        daemon: &Arc<InFlight>,
    ) -> Self {
        DescriptorBudget {
            limits,
            request: Arc::default(),
            app: app.clone(),
            daemon: daemon.clone(),
        }
    }

    /// A place for one more descriptor, if every count has room.
    pub(crate) fn try_take(&self) -> Result<DescriptorTicket, Exhausted> {
        let l = self.limits;
        Ok(DescriptorTicket {
            _request: self
                .request
                .try_enter(l.per_request)
                .ok_or(Exhausted::Request(l.per_request))?,
            _app: self
                .app
                .try_enter(l.per_app)
                .ok_or(Exhausted::App(l.per_app))?,
            _daemon: self
                .daemon
                .try_enter(l.all_guests)
                .ok_or(Exhausted::Daemon(l.all_guests))?,
        })
    }
}

/// Replaces wasi:filesystem's `open-at` and the `descriptor` destructor
/// with ones that count, and `open-at` (for writing) and
/// `create-directory-at` with ones that honour the files quota (see
/// `disk_quota.rs`). Call after `wasmtime_wasi::p2::add_to_linker_async`.
pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store,
         (dir, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let host = store.data_mut();
                let writes = flags.contains(DescriptorFlags::WRITE)
                    || oflags.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE);
                if writes && host.over_files_quota("open a file for writing") {
                    return Ok((Err(ErrorCode::Quota),));
                }
                let ticket = match host.descriptors.try_take() {
                    Ok(ticket) => ticket,
                    Err(exhausted) => {
                        host.warn_descriptors(&exhausted, "open a file");
                        return Ok((Err(ErrorCode::Quota),));
                    }
                };
                let opened = {
                    let mut fs = host.filesystem();
                    match HostDescriptor::open_at(&mut fs, dir, path_flags, path, oflags, flags)
                        .await
                    {
                        Ok(fd) => Ok(fd),
                        Err(e) => Err(types::Host::convert_error_code(&mut fs, e)?),
                    }
                };
                if let Ok(fd) = &opened {
                    host.open_files.insert(fd.rep(), ticket);
                }
                Ok((opened,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store, (dir, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let host = store.data_mut();
                if host.over_files_quota("create a directory") {
                    return Ok((Err(ErrorCode::Quota),));
                }
                let mut fs = host.filesystem();
                let created = match HostDescriptor::create_directory_at(&mut fs, dir, path).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(types::Host::convert_error_code(&mut fs, e)?),
                };
                Ok((created,))
            })
        },
    )?;
    types.resource(
        "descriptor",
        ResourceType::host::<Descriptor>(),
        |mut store, rep| {
            let host = store.data_mut();
            host.open_files.remove(&rep);
            HostDescriptor::drop(&mut host.filesystem(), Resource::new_own(rep))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_count_caps_and_tickets_give_their_places_back() {
        let limits = DescriptorLimits {
            per_request: 2,
            per_app: 3,
            all_guests: 4,
        };
        let (app, other_app, daemon) = (Arc::default(), Arc::default(), Arc::default());
        let first = DescriptorBudget::new(limits, &app, &daemon);
        let second = DescriptorBudget::new(limits, &app, &daemon);
        let other = DescriptorBudget::new(limits, &other_app, &daemon);

        let a = first.try_take().expect("room");
        let _b = first.try_take().expect("room");
        assert_eq!(first.try_take().err(), Some(Exhausted::Request(2)));
        let _c = second.try_take().expect("room in the app");
        assert_eq!(second.try_take().err(), Some(Exhausted::App(3)));
        let _d = other.try_take().expect("room in the daemon");
        assert_eq!(other.try_take().err(), Some(Exhausted::Daemon(4)));
        // A refused take holds nothing: the counts are where they were.
        assert_eq!((app.count(), daemon.count()), (3, 4));
        drop(a);
        assert_eq!((app.count(), daemon.count()), (2, 3));
        let _e = other.try_take().expect("room again");
    }
}
