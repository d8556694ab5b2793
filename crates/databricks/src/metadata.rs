//! Who am I, the warehouse, and Unity Catalog metadata.

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::Client;
use crate::error::Error;
use crate::sql::TableName;

/// The principal behind the credentials (SCIM `Me`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `userName`: an e-mail for a person, an application id (UUID) for a service principal.
    pub user_name: String,
    pub display_name: Option<String>,
    pub is_service_principal: bool,
}

/// The SQL warehouse the HTTP path names.
#[derive(Debug, Clone, Deserialize)]
pub struct Warehouse {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub state: String,
    #[serde(default)]
    pub auto_resume: Option<bool>,
    #[serde(default)]
    pub auto_stop_mins: Option<i64>,
    #[serde(default)]
    pub cluster_size: Option<String>,
    #[serde(default)]
    pub enable_serverless_compute: Option<bool>,
}

/// A personal access token of the principal, as the Token API lists it (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenInfo {
    pub token_id: String,
    pub comment: String,
    /// When it expires, in ms since the epoch; `None` when it never does.
    pub expiry_ms: Option<i64>,
}

/// A catalog the principal can see.
#[derive(Debug, Clone, Deserialize)]
pub struct Catalog {
    pub name: String,
    #[serde(default)]
    pub catalog_type: Option<String>,
}

/// A table or view as a Unity Catalog listing names it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    /// `MANAGED`, `EXTERNAL`, `VIEW`, `MATERIALIZED_VIEW`, …
    #[serde(default)]
    pub table_type: Option<String>,
}

/// A column of a table or view, as Unity Catalog describes it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TableColumn {
    pub name: String,
    /// Lower-case Spark type text: `bigint`, `timestamp`, `array<string>`.
    #[serde(default)]
    pub type_text: String,
    #[serde(default)]
    pub type_name: String,
}

/// One effective privilege of a principal on a securable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectivePrivilege {
    pub privilege: String,
    pub inherited_from: Option<(String, String)>,
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12] && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Client {
    /// Who the credentials belong to; remembered for GRANT suggestions.
    pub async fn me(&self) -> Result<Identity, Error> {
        let v: Value = self.call(Method::GET, "/api/2.0/preview/scim/v2/Me", &[], None).await?;
        let user_name = v.get("userName").and_then(Value::as_str).unwrap_or_default().to_string();
        let display_name = v.get("displayName").and_then(Value::as_str).map(str::to_string);
        let _ = self.inner.principal.set(user_name.clone());
        Ok(Identity { is_service_principal: is_uuid(&user_name), user_name, display_name })
    }

    /// The principal's own live personal access tokens, as the Token API
    /// lists them (expiry in ms since the epoch; `None` when it never expires).
    /// A workspace may refuse this to non-admins: callers treat an error as "not reported".
    pub async fn own_tokens(&self) -> Result<Vec<AccessTokenInfo>, Error> {
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            token_infos: Vec<Raw>,
        }
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            token_id: String,
            #[serde(default)]
            comment: String,
            #[serde(default)]
            expiry_time: Option<i64>,
        }
        let l: List = self.call(Method::GET, "/api/2.0/token/list", &[], None).await?;
        Ok(l.token_infos
            .into_iter()
            .map(|r| AccessTokenInfo { token_id: r.token_id, comment: r.comment, expiry_ms: r.expiry_time.filter(|e| *e > 0) })
            .collect())
    }

    /// The warehouse's state and settings.
    pub async fn warehouse(&self) -> Result<Warehouse, Error> {
        let path = format!("/api/2.0/sql/warehouses/{}", crate::sql::percent_encode(self.warehouse_id()));
        match self.call::<Warehouse>(Method::GET, &path, &[], None).await {
            Err(Error::Api { status: 404 | 400, .. }) => Err(Error::WarehouseNotFound { warehouse: self.warehouse_id().to_string() }),
            other => other,
        }
    }

    /// The SQL warehouses the principal may see (to suggest the right HTTP
    /// path when the configured one names no warehouse).
    pub async fn list_warehouses(&self) -> Result<Vec<Warehouse>, Error> {
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            warehouses: Vec<Warehouse>,
        }
        let l: List = self.call(Method::GET, "/api/2.0/sql/warehouses", &[], None).await?;
        Ok(l.warehouses)
    }

    /// Every catalog the principal can use, following all pages (a page may
    /// be empty while more follow).
    pub async fn list_catalogs(&self) -> Result<Vec<Catalog>, Error> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            catalogs: Vec<Catalog>,
            #[serde(default)]
            next_page_token: Option<String>,
        }
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10_000 {
            let mut q = vec![("max_results", "0".to_string())];
            if let Some(t) = &token {
                q.push(("page_token", t.clone()));
            }
            let page: Page = self.call(Method::GET, "/api/2.1/unity-catalog/catalogs", &q, None).await?;
            out.extend(page.catalogs);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
        Err(Error::Protocol { detail: "the catalog list did not end after 10,000 pages".into() })
    }

    /// The schemas of a catalog the principal can see, following all pages.
    pub async fn list_schemas(&self, catalog: &str) -> Result<Vec<String>, Error> {
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        let items: Vec<Named> = self.list_all("/api/2.1/unity-catalog/schemas", "schemas", &[("catalog_name", catalog)]).await?;
        Ok(items.into_iter().map(|n| n.name).collect())
    }

    /// The tables and views of a schema the principal can see (names and
    /// kinds; columns by [`Client::table_columns`]), following all pages.
    pub async fn list_tables(&self, catalog: &str, schema: &str) -> Result<Vec<TableInfo>, Error> {
        let q = [("catalog_name", catalog), ("schema_name", schema), ("omit_columns", "true")];
        self.list_all("/api/2.1/unity-catalog/tables", "tables", &q).await
    }

    /// Every item of a paged Unity Catalog listing (`key` holds a page's items).
    async fn list_all<T: serde::de::DeserializeOwned>(&self, path: &str, key: &str, query: &[(&str, &str)]) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10_000 {
            let mut q: Vec<(&str, String)> = query.iter().map(|(k, v)| (*k, v.to_string())).collect();
            q.push(("max_results", "0".to_string()));
            if let Some(t) = &token {
                q.push(("page_token", t.clone()));
            }
            let mut page: serde_json::Value = self.call(Method::GET, path, &q, None).await?;
            if let Some(items) = page.get_mut(key).map(serde_json::Value::take) {
                let items: Vec<T> = serde_json::from_value(items)
                    .map_err(|e| Error::Protocol { detail: format!("{path} answered a `{key}` list that does not parse: {e}") })?;
                out.extend(items);
            }
            match page.get("next_page_token").and_then(serde_json::Value::as_str).filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(out),
            }
        }
        Err(Error::Protocol { detail: format!("the listing of {path} did not end after 10,000 pages") })
    }

    /// The columns of a table or view, in order.
    pub async fn table_columns(&self, table: &TableName) -> Result<Vec<TableColumn>, Error> {
        #[derive(Deserialize)]
        struct Info {
            #[serde(default)]
            columns: Vec<TableColumn>,
        }
        let path = format!("/api/2.1/unity-catalog/tables/{}", table.path_segment());
        let by_api = match self.call::<Info>(Method::GET, &path, &[], None).await {
            Ok(i) if !i.columns.is_empty() => return Ok(i.columns),
            Ok(_) => "the Unity Catalog tables API listed no columns".to_string(),
            // Not in Unity Catalog's view (a legacy or foreign table), or a
            // workspace without that API: the warehouse may still know it.
            Err(Error::TableNotFound { .. }) => "the Unity Catalog tables API does not know it".to_string(),
            Err(Error::Api { status: 400 | 404 | 405 | 501, code, .. }) => {
                format!("the Unity Catalog tables API is not available here ({code})")
            }
            Err(e) => return Err(e),
        };
        tracing::info!(table = %table.full_name(), "{by_api}; reading the columns through the warehouse");
        match self.columns_by_query(table).await {
            Ok(cols) => Ok(cols),
            Err(Error::TableNotFound { .. }) => Err(Error::TableNotFound {
                name: table.full_name(),
                tried: vec![by_api, "the warehouse cannot find it either (TABLE_OR_VIEW_NOT_FOUND)".into()],
            }),
            Err(e) => Err(e),
        }
    }

    /// The columns of a table or view as the warehouse reads it: the
    /// manifest of `SELECT * … LIMIT 0`, which reads no data.
    async fn columns_by_query(&self, table: &TableName) -> Result<Vec<TableColumn>, Error> {
        let stmt = crate::Statement::new(format!("SELECT * FROM {} LIMIT 0", table.quoted()));
        let schema = self.result_columns(&stmt).await?;
        Ok(schema
            .into_iter()
            .map(|c| TableColumn { name: c.name, type_text: c.type_text.to_ascii_lowercase(), type_name: c.type_name })
            .collect())
    }

    /// The effective privileges of `principal` on a securable (`catalog`,
    /// `schema`, `table`), including inherited ones.
    pub async fn effective_privileges(
        &self,
        securable_type: &str,
        full_name: &str,
        principal: &str,
    ) -> Result<Vec<EffectivePrivilege>, Error> {
        let full_name = full_name.split('.').map(crate::sql::percent_encode).collect::<Vec<_>>().join(".");
        let path = format!("/api/2.1/unity-catalog/effective-permissions/{}/{full_name}", crate::sql::percent_encode(securable_type));
        let v: Value = self.call(Method::GET, &path, &[("principal", principal.to_string())], None).await?;
        let mut out = Vec::new();
        for a in v.get("privilege_assignments").and_then(Value::as_array).into_iter().flatten() {
            if a.get("principal").and_then(Value::as_str) != Some(principal) {
                continue;
            }
            for p in a.get("privileges").and_then(Value::as_array).into_iter().flatten() {
                let privilege = p.get("privilege").and_then(Value::as_str).unwrap_or_default().to_string();
                let from =
                    match (p.get("inherited_from_type").and_then(Value::as_str), p.get("inherited_from_name").and_then(Value::as_str)) {
                        (Some(t), Some(n)) => Some((t.to_string(), n.to_string())),
                        _ => None,
                    };
                out.push(EffectivePrivilege { privilege, inherited_from: from });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn service_principals_are_told_by_their_uuid() {
        assert!(super::is_uuid("8c1c7f4e-5b1a-4a41-9d7a-2f6f0c1d9e01"));
        assert!(!super::is_uuid("someone@example.com"));
    }
}
