//! Object storage by URL: a local directory (the default), `file://`, `s3://`, `gs://` or
//! `az://` / `abfs://`, through the object_store crate's builders with credentials and options
//! from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as those builders' `from_env` read them).
//!
//! Contract: a put is atomic (readers see the whole object or none) and durable when it returns:
//! on a local directory the file and its directory are fsynced; a remote store's put is durable
//! when acknowledged. [`Store::put_new`] creates an object only if it is absent (never
//! overwrites).
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use std::path::PathBuf;
use std::sync::Arc;

/// A store and the prefix under which Rainbow's objects live.
#[derive(Clone)]
pub struct Store {
    pub url: String,
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The directory behind a local store, for fsync.
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

/// A store that could not be opened or did not do what was asked, with its URL.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("object store {url}: {reason}")]
    Failed { url: String, reason: String },
    #[error("unsupported object store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// Whether a create-only put found the object already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Written,
    AlreadyThere,
}

impl Store {
    /// Opens the store a URL or path names. A local directory is created if needed.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let bad = |reason: String| StoreError::BadUrl { url: url.to_string(), reason };
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(bad("empty".into()));
        }
        let scheme = trimmed.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            None | Some("file") => {
                let dir = PathBuf::from(trimmed.strip_prefix("file://").unwrap_or(trimmed));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                let dir = dir.canonicalize().map_err(|e| bad(e.to_string()))?;
                let inner = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Store {
                    url: url.to_string(),
                    inner: Arc::new(inner),
                    prefix: Path::default(),
                    local_root: Some(dir),
                })
            }
            Some(scheme) => {
                let parsed = url::Url::parse(trimmed).map_err(|e| bad(e.to_string()))?;
                let inner: Arc<dyn ObjectStore> = match scheme {
                    "s3" | "s3a" => Arc::new(
                        object_store::aws::AmazonS3Builder::from_env()
                            .with_url(trimmed)
                            .build()
                            .map_err(|e| bad(e.to_string()))?,
                    ),
                    "gs" => Arc::new(
                        object_store::gcp::GoogleCloudStorageBuilder::from_env()
                            .with_url(trimmed)
                            .build()
                            .map_err(|e| bad(e.to_string()))?,
                    ),
                    "az" | "adl" | "azure" | "abfs" | "abfss" => Arc::new(
                        object_store::azure::MicrosoftAzureBuilder::from_env()
                            .with_url(trimmed)
                            .build()
                            .map_err(|e| bad(e.to_string()))?,
                    ),
                    other => {
                        return Err(bad(format!(
                        "scheme {other}:// is not one of file, s3, gs, az, abfs (or a plain directory path)"
                    )))
                    }
                };
                // The path after the bucket / container is our prefix.
                let prefix =
                    Path::parse(parsed.path().trim_start_matches('/')).map_err(|e| bad(e.to_string()))?;
                Ok(Store { url: url.to_string(), inner, prefix, local_root: None })
            }
        }
    }

    /// The directory of a local store (`None` for an object store).
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// `relative` as a URL other clients understand: `file:///<absolute path>` for a local
    /// store, the store's URL joined with it otherwise.
    pub fn url_of(&self, relative: &str) -> String {
        match &self.local_root {
            Some(root) => format!("file://{}", root.join(relative).display()),
            None => format!("{}/{}", self.url.trim_end_matches('/'), relative.trim_start_matches('/')),
        }
    }

    /// The object path of `relative` (slash-separated) under the store's prefix.
    pub fn path(&self, relative: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p = p.child(part);
        }
        p
    }

    /// `relative` of an object path (inverse of [`Store::path`]).
    pub fn relative(&self, path: &Path) -> Option<String> {
        let parts: Vec<_> = path.prefix_match(&self.prefix)?.map(|p| p.as_ref().to_string()).collect();
        Some(parts.join("/"))
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Failed { url: self.url.clone(), reason: e.to_string() }
    }

    /// Every object under `relative`, recursively, as relative paths with their sizes, sorted.
    pub async fn list(&self, relative: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = self.path(relative);
        let metas: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await.map_err(|e| self.err(e))?;
        let mut out: Vec<(String, u64)> =
            metas.into_iter().filter_map(|m| Some((self.relative(&m.location)?, m.size))).collect();
        out.sort();
        Ok(out)
    }

    pub async fn get(&self, relative: &str) -> Result<bytes::Bytes, StoreError> {
        let r =
            self.inner.get(&self.path(relative)).await.map_err(|e| self.err(format!("{relative}: {e}")))?;
        r.bytes().await.map_err(|e| self.err(format!("{relative}: {e}")))
    }

    /// `None` if the object does not exist.
    pub async fn get_opt(&self, relative: &str) -> Result<Option<bytes::Bytes>, StoreError> {
        match self.inner.get(&self.path(relative)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.err(format!("{relative}: {e}")))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("{relative}: {e}"))),
        }
    }

    /// Writes (or replaces) an object atomically.
    pub async fn put(&self, relative: &str, data: Vec<u8>) -> Result<(), StoreError> {
        self.inner
            .put(&self.path(relative), PutPayload::from(data))
            .await
            .map_err(|e| self.err(format!("{relative}: {e}")))?;
        self.sync(relative)
    }

    /// Creates an object that must not exist yet; an existing one is left untouched.
    pub async fn put_new(&self, relative: &str, data: Vec<u8>) -> Result<Created, StoreError> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.inner.put_opts(&self.path(relative), PutPayload::from(data), opts).await {
            Ok(_) => {
                self.sync(relative)?;
                Ok(Created::Written)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyThere),
            Err(e) => Err(self.err(format!("{relative}: {e}"))),
        }
    }

    pub async fn delete(&self, relative: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(relative)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("{relative}: {e}"))),
        }
    }

    /// fsync of a local object and its directory (a no-op on remote stores, whose put is
    /// durable when acknowledged).
    fn sync(&self, relative: &str) -> Result<(), StoreError> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let file = root.join(self.path(relative).as_ref());
        let sync = |p: &std::path::Path| std::fs::File::open(p).and_then(|f| f.sync_all());
        sync(&file).map_err(|e| self.err(format!("fsync {}: {e}", file.display())))?;
        if let Some(dir) = file.parent() {
            sync(dir).map_err(|e| self.err(format!("fsync {}: {e}", dir.display())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_creates_once_and_lists_relative_paths() {
        let dir = std::env::temp_dir().join(format!("rb-store-{}", std::process::id()));
        let store = Store::open(dir.to_str().unwrap()).unwrap();
        assert_eq!(store.put_new("a/b/x.bin", b"one".to_vec()).await.unwrap(), Created::Written);
        assert_eq!(store.put_new("a/b/x.bin", b"two".to_vec()).await.unwrap(), Created::AlreadyThere);
        assert_eq!(&store.get("a/b/x.bin").await.unwrap()[..], b"one");
        assert_eq!(store.list("a").await.unwrap(), vec![("a/b/x.bin".to_string(), 3)]);
        assert!(store.get_opt("a/none").await.unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_schemes_and_cloud_urls_without_credentials_say_what_is_wrong() {
        let e = Store::open("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("ftp://") && e.contains("s3"), "{e}");
        // The S3 builder needs a bucket; the URL names one, so it builds (credentials are only
        // needed when a request is made) and the prefix is the path after the bucket.
        let s = Store::open("s3://bucket/some/prefix").unwrap();
        assert_eq!(s.path("master/x").as_ref(), "some/prefix/master/x");
    }
}
