//! Opening the catalog named by URL.

use crate::error::LakeError;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent};
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;
use std::collections::HashMap;
use std::sync::Arc;

/// Where the tables are: a catalog and a warehouse, by URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeConfig {
    /// `sqlite:<path>` (SQL catalog on a SQLite file, created when missing) or
    /// `http(s)://<host>/<path>` (REST catalog).
    pub catalog_url: String,
    /// Where new tables' files go: `file:///<abs path>`, `s3://`, `gs://`, `abfss://`.
    pub warehouse_url: String,
    /// The namespace of the tables.
    pub namespace: String,
    /// Storage settings handed to the warehouse's client (`s3.region`, `s3.endpoint`, ...).
    pub properties: HashMap<String, String>,
}

impl LakeConfig {
    /// The catalog and warehouse named, else under `store`'s `iceberg/` folder: a SQLite catalog
    /// `iceberg/catalog.db` (a local store only: `None` for an object store without a named
    /// catalog) and the warehouse `iceberg/`.
    pub fn under(
        store: &rainbow_runtime::store::Store,
        catalog_url: Option<&str>,
        warehouse_url: Option<&str>,
        namespace: &str,
        properties: HashMap<String, String>,
    ) -> Option<LakeConfig> {
        let catalog_url = match (catalog_url, store.local_root()) {
            (Some(url), _) => url.to_string(),
            (None, Some(root)) => format!("sqlite:{}", root.join("iceberg/catalog.db").display()),
            (None, None) => return None,
        };
        Some(LakeConfig {
            catalog_url,
            warehouse_url: warehouse_url.map_or_else(|| store.url_of("iceberg"), str::to_string),
            namespace: namespace.to_string(),
            properties,
        })
    }
}

/// The name Rainbow gives its SQL catalog (the `catalog_name` of its rows).
pub(crate) const CATALOG_NAME: &str = "rainbow";

/// How to reach the catalog beside the crate's client, for the commits the crate's transactions
/// cannot express (crate::commit).
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    /// The SQLite database's URL.
    Sqlite(String),
    /// The REST catalog's URL, the warehouse and the settings given to its client.
    Rest { uri: String, warehouse: String, properties: HashMap<String, String> },
}

/// An open catalog and the namespace of Rainbow's tables in it.
pub struct Lake {
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) namespace: NamespaceIdent,
    pub(crate) endpoint: Endpoint,
    pub url: String,
}

impl Lake {
    /// Opens (and for SQLite creates) the catalog and the namespace.
    pub async fn open(config: &LakeConfig) -> Result<Lake, LakeError> {
        let url = config.catalog_url.clone();
        let bad = |reason: &str| LakeError::Setting {
            key: "catalog_url",
            value: url.clone(),
            reason: reason.to_string(),
        };
        if config.namespace.trim().is_empty() || config.namespace.contains('.') {
            return Err(LakeError::Setting {
                key: "namespace",
                value: config.namespace.clone(),
                reason: "a name without dots".into(),
            });
        }
        let mut props = config.properties.clone();
        let failed = |source| LakeError::Catalog { url: url.clone(), source: Box::new(source) };
        let endpoint;
        let catalog: Arc<dyn Catalog> = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                return Err(bad("a path after `sqlite:`"));
            }
            if let Some(dir) = std::path::Path::new(path).parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| bad(&format!("cannot create {}: {e}", dir.display())))?;
            }
            props.insert("uri".into(), format!("sqlite:{path}?mode=rwc"));
            endpoint = Endpoint::Sqlite(format!("sqlite:{path}"));
            props.insert("warehouse".into(), config.warehouse_url.clone());
            props.insert("sql_bind_style".into(), "QMark".into());
            // One connection: SQLite serialises writers anyway, and a pool of one never sees
            // "database is locked" from itself.
            props.insert("pool.max-connections".into(), "1".into());
            Arc::new(
                iceberg_catalog_sql::SqlCatalogBuilder::default()
                    .with_storage_factory(Arc::new(OpenDalResolvingStorageFactory::new()))
                    .load(CATALOG_NAME, props)
                    .await
                    .map_err(failed)?,
            )
        } else if url.starts_with("http://") || url.starts_with("https://") {
            props.insert("uri".into(), url.clone());
            props.insert("warehouse".into(), config.warehouse_url.clone());
            endpoint = Endpoint::Rest {
                uri: url.clone(),
                warehouse: config.warehouse_url.clone(),
                properties: config.properties.clone(),
            };
            Arc::new(
                iceberg_catalog_rest::RestCatalogBuilder::default()
                    .with_storage_factory(Arc::new(OpenDalResolvingStorageFactory::new()))
                    .load(CATALOG_NAME, props)
                    .await
                    .map_err(failed)?,
            )
        } else {
            return Err(bad("`sqlite:<path>` or an http(s) URL of a REST catalog"));
        };
        let namespace = NamespaceIdent::new(config.namespace.clone());
        if !catalog.namespace_exists(&namespace).await.map_err(failed)? {
            if let Err(e) = catalog.create_namespace(&namespace, HashMap::new()).await {
                // Another writer may have created it meanwhile.
                if !catalog.namespace_exists(&namespace).await.map_err(failed)? {
                    return Err(failed(e));
                }
            }
        }
        Ok(Lake { catalog, namespace, endpoint, url })
    }

    /// The catalog, for readers of the tables (the replay, tests).
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// The table identifier of `name` in the namespace.
    pub fn ident(&self, name: &str) -> iceberg::TableIdent {
        iceberg::TableIdent::new(self.namespace.clone(), name.to_string())
    }
}
