//! Artifacts in the mesh's object store: stored by publishers under their
//! digest, fetched by nodes into their own artifact store.

use crate::buckets::CHUNK_SIZE;
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use meshd_artifacts::{ArtifactStore, Digest, StoreError};

/// Why an artifact could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The object store has no artifact of that digest.
    #[error("artifact sha256:{0} is not in the mesh's object store")]
    Missing(String),
    /// The bytes received do not have the digest they are stored under.
    #[error("artifact sha256:{digest} from the mesh is corrupt: {detail}")]
    Corrupt {
        /// The digest asked for (hex).
        digest: String,
        /// What was wrong.
        detail: String,
    },
    /// The artifact is larger than this node takes.
    #[error("artifact sha256:{digest} is larger than this node's --max-wasm-size ({limit} bytes)")]
    TooLarge {
        /// The digest asked for (hex).
        digest: String,
        /// The limit.
        limit: u64,
    },
    /// NATS failed while sending it (the node retries on the next change
    /// or resynchronisation).
    #[error("cannot fetch artifact sha256:{digest} from the mesh: {detail}")]
    Transfer {
        /// The digest asked for (hex).
        digest: String,
        /// The cause.
        detail: String,
    },
    /// The local artifact store failed.
    #[error("cannot keep artifact sha256:{digest}: {detail}")]
    Store {
        /// The digest asked for (hex).
        digest: String,
        /// The cause.
        detail: String,
    },
}

/// How long a download may go without receiving anything.
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Reads a whole object, at most `limit` bytes, failing if no data comes
/// for [`STALL_TIMEOUT`].
async fn read_bounded(
    mut object: async_nats::jetstream::object_store::Object,
    hex: &str,
    limit: u64,
) -> Result<Vec<u8>, FetchError> {
    use tokio::io::AsyncReadExt as _;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(STALL_TIMEOUT, object.read(&mut buf))
            .await
            .map_err(|_| FetchError::Transfer {
                digest: hex.to_owned(),
                detail: format!("no data for {} s", STALL_TIMEOUT.as_secs()),
            })?;
        match read {
            Ok(0) => return Ok(bytes),
            Ok(n) => {
                if (bytes.len() + n) as u64 > limit {
                    return Err(FetchError::TooLarge {
                        digest: hex.to_owned(),
                        limit,
                    });
                }
                bytes.extend_from_slice(&buf[..n]);
            }
            // The object store checks its own digest at the end of the
            // stream: a short or altered transfer ends as invalid data.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(FetchError::Corrupt {
                    digest: hex.to_owned(),
                    detail: e.to_string(),
                })
            }
            Err(e) => {
                return Err(FetchError::Transfer {
                    digest: hex.to_owned(),
                    detail: e.to_string(),
                })
            }
        }
    }
}

/// Stores `bytes` in the object store under their digest (unless an
/// artifact of that digest is there already) and returns the digest.
pub async fn upload(objects: &ObjectStore, bytes: &[u8]) -> anyhow::Result<Digest> {
    let digest = Digest::of(bytes);
    let name = digest.to_hex();
    if let Ok(info) = objects.info(&name).await {
        if !info.deleted && info.size as u64 == bytes.len() as u64 {
            return Ok(digest);
        }
    }
    let meta = ObjectMetadata {
        name: name.clone(),
        chunk_size: Some(CHUNK_SIZE),
        ..Default::default()
    };
    let mut reader = bytes;
    objects
        .put(meta, &mut reader)
        .await
        .map_err(|e| anyhow::anyhow!("cannot store artifact sha256:{name} in the mesh: {e}"))?;
    Ok(digest)
}

/// Makes sure the node's artifact store has `digest`: if it does not, the
/// artifact is read from the object store (at most `limit` bytes; the
/// deploy holds an app's bytes in memory anyway), written to a temporary
/// file of the local store, verified against the digest once the whole of
/// it was written, and only then renamed into place. Returns its bytes.
pub async fn fetch(
    objects: &ObjectStore,
    store: &ArtifactStore,
    digest: &Digest,
    limit: u64,
) -> Result<Vec<u8>, FetchError> {
    let hex = digest.to_hex();
    if !store.contains(digest) {
        let object = get_object(objects, &hex).await?;
        // Read asynchronously, each read bounded: a download whose consumer
        // stalls (its server went away mid-transfer) fails instead of
        // holding the follower, and no blocking thread waits on it.
        let bytes = read_bounded(object, &hex, limit).await?;
        let (writer, expected) = (store.clone(), *digest);
        let stored = tokio::task::spawn_blocking(move || {
            writer.put_reader(bytes.as_slice(), limit, Some(&expected))
        })
        .await
        .map_err(|e| FetchError::Store {
            digest: hex.clone(),
            detail: e.to_string(),
        })?;
        match stored {
            Ok(_) => {}
            Err(StoreError::DigestMismatch { actual, .. }) => {
                return Err(FetchError::Corrupt {
                    digest: hex,
                    detail: format!("its bytes hash to sha256:{actual}"),
                })
            }
            Err(StoreError::TooLarge { limit }) => {
                return Err(FetchError::TooLarge { digest: hex, limit })
            }
            Err(e) => {
                return Err(FetchError::Store {
                    digest: hex,
                    detail: e.to_string(),
                })
            }
        }
    }
    let reader = store.clone();
    let digest = *digest;
    tokio::task::spawn_blocking(move || reader.get(&digest))
        .await
        .map_err(|e| FetchError::Store {
            digest: digest.to_hex(),
            detail: e.to_string(),
        })?
        .map_err(|e| FetchError::Store {
            digest: digest.to_hex(),
            detail: e.to_string(),
        })
}

/// How often, and how far apart, a missing artifact is looked for again
/// before it counts as missing.
const MISSING_TRIES: u32 = 10;
const MISSING_PAUSE: std::time::Duration = std::time::Duration::from_millis(300);

/// Opens artifact `hex` in the object store. Reads may go to a replica
/// that has not caught up with the publisher's write yet (direct gets are
/// not read-after-write consistent across replicas): seen with a
/// three-server cluster, where a node refused a version just published as
/// "not in the mesh's object store". So a missing artifact is looked for
/// again for a few seconds before it is called missing.
async fn get_object(
    objects: &ObjectStore,
    hex: &str,
) -> Result<async_nats::jetstream::object_store::Object, FetchError> {
    use async_nats::jetstream::object_store::GetErrorKind;
    let mut tries = 0;
    loop {
        tries += 1;
        match objects.get(hex).await {
            Ok(object) => return Ok(object),
            Err(e) => match e.kind() {
                GetErrorKind::NotFound | GetErrorKind::BucketLink if tries < MISSING_TRIES => {
                    tokio::time::sleep(MISSING_PAUSE).await;
                }
                GetErrorKind::NotFound | GetErrorKind::BucketLink => {
                    return Err(FetchError::Missing(hex.to_owned()))
                }
                _ => {
                    return Err(FetchError::Transfer {
                        digest: hex.to_owned(),
                        detail: e.to_string(),
                    })
                }
            },
        }
    }
}
