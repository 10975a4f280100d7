//! The platform services of `wit/app.wit` (`world platform`): wasi:keyvalue
//! on meshd's per-tenant store, wasi:logging into meshd's log. (wasi:config
//! comes from the `wasmtime-wasi-config` crate, see `engine.rs`.)

use crate::host::Host;
use crate::log_ring::LogSource;
use meshd_keyvalue::{BucketRef, KvError};
use wasmtime::component::Resource;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "steelmesh:app/platform",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::KvBucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};
use bindings::wasi::logging::logging;

/// Adds wasi:keyvalue and wasi:logging to the linker.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<Host>) -> wasmtime::Result<()> {
    type Data = wasmtime::component::HasSelf<Host>;
    store::add_to_linker::<Host, Data>(linker, |h| h)?;
    atomics::add_to_linker::<Host, Data>(linker, |h| h)?;
    batch::add_to_linker::<Host, Data>(linker, |h| h)?;
    logging::add_to_linker::<Host, Data>(linker, |h| h)
}

/// An open bucket: just its name; the tenant comes from the Store.
pub struct KvBucket {
    name: String,
}

/// Longest bucket name.
const MAX_BUCKET_NAME: usize = 256;
/// Longest log message kept whole.
const MAX_LOG_MESSAGE: usize = 16 * 1024;
/// Longest log context kept whole.
const MAX_LOG_CONTEXT: usize = 256;

/// Cuts `text` to at most `max` bytes (on a character boundary) and escapes
/// line breaks, so a guest can neither flood nor forge log lines.
fn sanitize(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    if text.contains(['\n', '\r']) {
        text = text.replace('\n', "\\n").replace('\r', "\\r");
    }
    text
}

fn guest_error(e: KvError) -> store::Error {
    store::Error::Other(e.to_string())
}

impl Host {
    fn bucket_name(&self, bucket: &Resource<KvBucket>) -> wasmtime::Result<String> {
        Ok(self.table.get(bucket)?.name.clone())
    }
}

type KvResult<T> = wasmtime::Result<Result<T, store::Error>>;

impl store::Host for Host {
    async fn open(&mut self, identifier: String) -> KvResult<Resource<KvBucket>> {
        if identifier.len() > MAX_BUCKET_NAME {
            return Ok(Err(store::Error::Other(format!(
                "bucket name is {} bytes; the limit is {MAX_BUCKET_NAME}",
                identifier.len()
            ))));
        }
        Ok(Ok(self.table.push(KvBucket { name: identifier })?))
    }
}

impl store::HostBucket for Host {
    async fn get(&mut self, bucket: Resource<KvBucket>, key: String) -> KvResult<Option<Vec<u8>>> {
        let name = self.bucket_name(&bucket)?;
        let b = BucketRef {
            tenant: &self.app,
            bucket: &name,
        };
        Ok(self.kv.get(b, &key).await.map_err(guest_error))
    }

    async fn set(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
        value: Vec<u8>,
    ) -> KvResult<()> {
        let name = self.bucket_name(&bucket)?;
        let b = BucketRef {
            tenant: &self.app,
            bucket: &name,
        };
        Ok(self.kv.set(b, &key, &value).await.map_err(guest_error))
    }

    async fn delete(&mut self, bucket: Resource<KvBucket>, key: String) -> KvResult<()> {
        let name = self.bucket_name(&bucket)?;
        let b = BucketRef {
            tenant: &self.app,
            bucket: &name,
        };
        Ok(self.kv.delete(b, &key).await.map_err(guest_error))
    }

    async fn exists(&mut self, bucket: Resource<KvBucket>, key: String) -> KvResult<bool> {
        let name = self.bucket_name(&bucket)?;
        let b = BucketRef {
            tenant: &self.app,
            bucket: &name,
        };
        Ok(self.kv.exists(b, &key).await.map_err(guest_error))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<KvBucket>,
        cursor: Option<u64>,
    ) -> KvResult<store::KeyResponse> {
        let name = self.bucket_name(&bucket)?;
        let b = BucketRef {
            tenant: &self.app,
            bucket: &name,
        };
        Ok(self
            .kv
            .list_keys(b, cursor)
            .await
            .map(|page| store::KeyResponse {
                keys: page.keys,
                cursor: page.cursor,
            })
            .map_err(guest_error))
    }

    async fn drop(&mut self, bucket: Resource<KvBucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Host {
    async fn increment(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
        delta: u64,
    ) -> KvResult<u64> {
        let name = self.bucket_name(&bucket)?;
        let b = BucketRef {
            tenant: &self.app,
            bucket: &name,
        };
        Ok(self.kv.increment(b, &key, delta).await.map_err(guest_error))
    }
}

impl batch::Host for Host {
    async fn get_many(
        &mut self,
        bucket: Resource<KvBucket>,
        keys: Vec<String>,
    ) -> KvResult<Vec<Option<(String, Vec<u8>)>>> {
        let name = self.bucket_name(&bucket)?;
        let b = BucketRef {
            tenant: &self.app,
            bucket: &name,
        };
        Ok(self.kv.get_many(b, keys).await.map_err(guest_error))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<KvBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> KvResult<()> {
        let name = self.bucket_name(&bucket)?;
        let b = BucketRef {
            tenant: &self.app,
            bucket: &name,
        };
        Ok(self.kv.set_many(b, key_values).await.map_err(guest_error))
    }

    async fn delete_many(&mut self, bucket: Resource<KvBucket>, keys: Vec<String>) -> KvResult<()> {
        let name = self.bucket_name(&bucket)?;
        let b = BucketRef {
            tenant: &self.app,
            bucket: &name,
        };
        Ok(self.kv.delete_many(b, keys).await.map_err(guest_error))
    }
}

impl logging::Host for Host {
    async fn log(
        &mut self,
        level: logging::Level,
        context: String,
        message: String,
    ) -> wasmtime::Result<()> {
        if !self.log_budget.admit() {
            return Ok(());
        }
        let context = sanitize(context, MAX_LOG_CONTEXT);
        let message = sanitize(message, MAX_LOG_MESSAGE);
        let app = &*self.app;
        let level_name = match level {
            logging::Level::Trace => "trace",
            logging::Level::Debug => "debug",
            logging::Level::Info => "info",
            logging::Level::Warn => "warn",
            logging::Level::Error => "error",
            logging::Level::Critical => "critical",
        };
        self.log_ring
            .push(LogSource::Logging(level_name), Some(&context), &message);
        match level {
            logging::Level::Trace => {
                tracing::trace!(target: "guest", app = %app, context = %context, "{message}")
            }
            logging::Level::Debug => {
                tracing::debug!(target: "guest", app = %app, context = %context, "{message}")
            }
            logging::Level::Info => {
                tracing::info!(target: "guest", app = %app, context = %context, "{message}")
            }
            logging::Level::Warn => {
                tracing::warn!(target: "guest", app = %app, context = %context, "{message}")
            }
            logging::Level::Error | logging::Level::Critical => {
                tracing::error!(target: "guest", app = %app, context = %context, critical = matches!(level, logging::Level::Critical), "{message}")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn log_text_is_cut_and_cannot_forge_lines() {
        assert_eq!(sanitize("a\nINFO forged".into(), 100), "a\\nINFO forged");
        assert_eq!(sanitize("ééé".into(), 3), "é…");
    }
}
