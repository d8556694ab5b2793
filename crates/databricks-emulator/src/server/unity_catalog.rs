//! Unity Catalog: catalogs, schemas, tables (with pagination), effective and direct permissions.

use super::*;

/// `max_results` / `page_token` as Unity Catalog takes them.
pub(super) fn page<T>(items: Vec<T>, q: &HashMap<String, String>, min_positive: i64) -> Result<(Vec<T>, Option<String>), ApiError> {
    let max = match q.get("max_results") {
        None => None,
        Some(v) => {
            let n: i64 = v.parse().map_err(|_| ApiError::invalid_parameter(format!("Invalid max_results: {v}")))?;
            if n < 0 || (n > 0 && n < min_positive) {
                let range = if min_positive > 1 { format!("0 or at least {min_positive}") } else { "0 or greater".into() };
                return Err(ApiError::invalid_parameter(format!("max_results must be {range}; got {n}.")));
            }
            Some(if n == 0 { DEFAULT_PAGE } else { (n as usize).min(DEFAULT_PAGE) })
        }
    };
    let offset = match q.get("page_token").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse::<usize>().ok()))
            .ok_or_else(|| ApiError::invalid_parameter("Invalid page_token: it was not issued by this server."))?,
    };
    let Some(size) = max else { return Ok((items.into_iter().skip(offset).collect(), None)) };
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(offset).take(size).collect();
    // A full page always carries a token, so a listing whose size is a
    // multiple of the page size ends with an empty page, as Databricks' can.
    let next = (page.len() == size && offset + size <= total)
        .then(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{}", offset + size)));
    Ok((page, next))
}

pub(super) fn listing(key: &str, items: Vec<Value>, next: Option<String>) -> Response {
    let mut m = Map::new();
    m.insert(key.into(), Value::Array(items));
    if let Some(t) = next {
        m.insert("next_page_token".into(), json!(t));
    }
    ok(Value::Object(m))
}

pub(super) fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

pub(super) fn catalog_json(name: &str, owner: &str, comment: &str, created_ms: i64, browse_only: bool) -> Value {
    let system = name == "system";
    json!({
        "name": name,
        "full_name": name,
        "catalog_type": if system { "SYSTEM_CATALOG" } else { "MANAGED_CATALOG" },
        "owner": owner,
        "comment": comment,
        "metastore_id": METASTORE_ID,
        "created_at": created_ms,
        "created_by": if system { "System user" } else { owner },
        "updated_at": created_ms,
        "updated_by": if system { "System user" } else { owner },
        "isolation_mode": "OPEN",
        "securable_type": "CATALOG",
        "securable_kind": if system { "CATALOG_SYSTEM" } else { "CATALOG_STANDARD" },
        "browse_only": browse_only,
    })
}

pub(super) fn visible_catalog_list(ws: &Workspace, p: &Principal, include_browse: bool) -> Vec<Value> {
    let mut out: Vec<(String, Value)> = ws
        .visible_catalogs(p, include_browse)
        .into_iter()
        .map(|(name, c, browse)| (name.clone(), catalog_json(name, &c.owner, &c.comment, c.created_at.timestamp_millis(), browse)))
        .collect();
    if !ws.catalogs.contains_key("system") {
        out.push(("system".into(), catalog_json("system", "System user", "System catalog (auto-created)", 0, false)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

pub(super) async fn list_catalogs(
    State(emu): State<Emulator>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let all = visible_catalog_list(&emu.ws(), &caller.principal, flag(&q, "include_browse"));
    let (items, next) = page(all, &q, 1)?;
    Ok(listing("catalogs", items, next))
}

pub(super) async fn get_catalog(State(emu): State<Emulator>, caller: Caller, Path(name): Path<String>) -> Result<Response, ApiError> {
    let ws = emu.ws();
    if name != "system" && !ws.catalogs.contains_key(&name) {
        return Err(ApiError::not_found("CATALOG_DOES_NOT_EXIST", format!("Catalog '{name}' does not exist.")));
    }
    visible_catalog_list(&ws, &caller.principal, true)
        .into_iter()
        .find(|c| c["name"] == name)
        .map(ok)
        .ok_or_else(|| ApiError::permission_denied(format!("User does not have USE CATALOG on Catalog '{name}'.")))
}

/// The catalog and schema a listing names, checked as Unity Catalog checks them.
pub(super) fn check_schema_access(ws: &Workspace, p: &Principal, c: &str, s: Option<&str>) -> Result<(), ApiError> {
    if !ws.catalogs.contains_key(c) {
        return Err(ApiError::not_found("CATALOG_DOES_NOT_EXIST", format!("Catalog '{c}' does not exist.")));
    }
    if let Some(d) = ws.use_denied(p, c, None) {
        return Err(ApiError::permission_denied(d.message()));
    }
    if let Some(s) = s
        && s != "information_schema"
        && !ws.catalogs[c].schemas.contains_key(s)
    {
        return Err(ApiError::not_found("SCHEMA_DOES_NOT_EXIST", format!("Schema '{c}.{s}' does not exist.")));
    }
    match ws.use_denied(p, c, s) {
        Some(d) => Err(ApiError::permission_denied(d.message())),
        None => Ok(()),
    }
}

pub(super) fn required<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    q.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::invalid_parameter(format!("Missing required field: {name}")))
}

pub(super) async fn list_schemas(
    State(emu): State<Emulator>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let c = required(&q, "catalog_name")?;
    let ws = emu.ws();
    if c == "system" {
        let info = json!({"name": "information_schema", "catalog_name": "system", "owner": "System user", "full_name": "system.information_schema",
            "comment": "Information schema (auto-created)", "securable_type": "SCHEMA", "securable_kind": "SCHEMA_SYSTEM",
            "metastore_id": METASTORE_ID, "catalog_type": "SYSTEM_CATALOG", "browse_only": false});
        let (items, next) = page(vec![info], &q, 1)?;
        return Ok(listing("schemas", items, next));
    }
    check_schema_access(&ws, &caller.principal, c, None)?;
    let cat = &ws.catalogs[c];
    let mut all: Vec<(String, Value)> = cat
        .schemas
        .iter()
        .filter(|(s, _)| ws.can_see_schema(&caller.principal, c, s))
        .map(|(s, e)| {
            (
                s.clone(),
                json!({
                    "name": s, "catalog_name": c, "owner": e.owner, "comment": e.comment,
                    "properties": {}, "metastore_id": METASTORE_ID, "full_name": format!("{c}.{s}"),
                    "created_at": e.created_at.timestamp_millis(), "created_by": e.owner,
                    "updated_at": e.created_at.timestamp_millis(), "updated_by": e.owner,
                    "catalog_type": "MANAGED_CATALOG", "schema_id": e.schema_id,
                    "securable_type": "SCHEMA", "securable_kind": "SCHEMA_STANDARD", "browse_only": false,
                }),
            )
        })
        .collect();
    all.push((
        "information_schema".into(),
        json!({"name": "information_schema", "catalog_name": c, "owner": "System user", "comment": "Information schema (auto-created)",
            "full_name": format!("{c}.information_schema"), "metastore_id": METASTORE_ID, "catalog_type": "MANAGED_CATALOG",
            "securable_type": "SCHEMA", "securable_kind": "SCHEMA_SYSTEM", "browse_only": false}),
    ));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let (items, next) = page(all.into_iter().map(|(_, v)| v).collect(), &q, 1)?;
    Ok(listing("schemas", items, next))
}

pub(super) fn table_json(ws: &Workspace, c: &str, s: &str, t: &str, with_columns: bool) -> Value {
    let e = ws.table(c, s, t).expect("caller checked the table exists");
    let schema = e.schema();
    let mut m = Map::new();
    m.insert("name".into(), json!(t));
    m.insert("catalog_name".into(), json!(c));
    m.insert("schema_name".into(), json!(s));
    m.insert("table_type".into(), json!(if e.is_view() { "VIEW" } else { "MANAGED" }));
    if !e.is_view() {
        m.insert("data_source_format".into(), json!("DELTA"));
        m.insert("storage_location".into(), json!(format!("s3://emulator-metastore/tables/{}", e.table_id)));
    }
    if with_columns {
        let cols: Vec<Value> = schema.fields().iter().enumerate().map(|(i, f)| catalog_column_json(f, i)).collect();
        m.insert("columns".into(), Value::Array(cols));
    }
    m.insert("owner".into(), json!(e.owner));
    m.insert("comment".into(), json!(e.comment));
    m.insert("properties".into(), json!({}));
    if let Relation::View { sql, .. } = &e.relation {
        m.insert("view_definition".into(), json!(sql.trim()));
    }
    m.insert("full_name".into(), json!(format!("{c}.{s}.{t}")));
    m.insert("table_id".into(), json!(e.table_id));
    m.insert("metastore_id".into(), json!(METASTORE_ID));
    m.insert("created_at".into(), json!(e.created_at.timestamp_millis()));
    m.insert("created_by".into(), json!(e.owner));
    m.insert("updated_at".into(), json!(e.updated_at.timestamp_millis()));
    m.insert("updated_by".into(), json!(e.owner));
    m.insert("securable_type".into(), json!("TABLE"));
    m.insert("securable_kind".into(), json!(if e.is_view() { "TABLE_VIEW" } else { "TABLE_DELTA" }));
    m.insert("browse_only".into(), json!(false));
    Value::Object(m)
}

pub(super) async fn list_tables(
    State(emu): State<Emulator>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let c = required(&q, "catalog_name")?;
    let s = required(&q, "schema_name")?;
    let ws = emu.ws();
    check_schema_access(&ws, &caller.principal, c, Some(s))?;
    let names: Vec<String> = ws.catalogs[c]
        .schemas
        .get(s)
        .map(|sch| sch.tables.keys().filter(|t| ws.can_see_table(&caller.principal, c, s, t)).cloned().collect())
        .unwrap_or_default();
    let with_columns = !flag(&q, "omit_columns");
    let all: Vec<Value> = names.iter().map(|t| table_json(&ws, c, s, t, with_columns)).collect();
    let (items, next) = page(all, &q, 1)?;
    Ok(listing("tables", items, next))
}

pub(super) fn split_table(full: &str) -> Result<(String, String, String), ApiError> {
    let parts: Vec<&str> = full.split('.').collect();
    match parts.as_slice() {
        [c, s, t] if !c.is_empty() && !s.is_empty() && !t.is_empty() => Ok((c.to_string(), s.to_string(), t.to_string())),
        _ => Err(ApiError::invalid_parameter(format!("Invalid table full name '{full}': a table is named catalog.schema.table."))),
    }
}

pub(super) async fn get_table(State(emu): State<Emulator>, caller: Caller, Path(full): Path<String>) -> Result<Response, ApiError> {
    let (c, s, t) = split_table(&full)?;
    let ws = emu.ws();
    check_schema_access(&ws, &caller.principal, &c, Some(&s))?;
    if ws.table(&c, &s, &t).is_none() {
        return Err(ApiError::not_found("TABLE_DOES_NOT_EXIST", format!("Table '{c}.{s}.{t}' does not exist.")));
    }
    if !ws.can_see_table(&caller.principal, &c, &s, &t) {
        return Err(ApiError::permission_denied(format!("User does not have SELECT on Table '{c}.{s}.{t}'.")));
    }
    Ok(ok(table_json(&ws, &c, &s, &t, true)))
}

pub(super) async fn table_exists(State(emu): State<Emulator>, caller: Caller, Path(full): Path<String>) -> Result<Response, ApiError> {
    let (c, s, t) = split_table(&full)?;
    let ws = emu.ws();
    check_schema_access(&ws, &caller.principal, &c, Some(&s))?;
    Ok(ok(json!({"table_exists": ws.table(&c, &s, &t).is_some()})))
}

pub(super) fn securable(ws: &Workspace, kind: &str, full: &str) -> Result<Securable, ApiError> {
    let sec = Securable::parse(kind, full).ok_or_else(|| {
        ApiError::invalid_parameter(format!(
            "Invalid securable_type '{kind}' for '{full}': use catalog, schema or table with a matching full name."
        ))
    })?;
    let (exists, code, what) = match &sec {
        Securable::Catalog(c) => (ws.catalogs.contains_key(c), "CATALOG_DOES_NOT_EXIST", "Catalog"),
        Securable::Schema(c, s) => (ws.catalogs.get(c).is_some_and(|x| x.schemas.contains_key(s)), "SCHEMA_DOES_NOT_EXIST", "Schema"),
        Securable::Table(c, s, t) => (ws.table(c, s, t).is_some(), "TABLE_DOES_NOT_EXIST", "Table"),
    };
    if !exists {
        return Err(ApiError::not_found(code, format!("{what} '{full}' does not exist.")));
    }
    Ok(sec)
}

pub(super) async fn effective_permissions(
    State(emu): State<Emulator>,
    caller: Caller,
    Path((kind, full)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ws = emu.ws();
    let sec = securable(&ws, &kind, &full)?;
    let me = &caller.principal;
    let privileged = me.admin || ws.has(me, "MANAGE", &sec);
    let who: Vec<String> = match q.get("principal").filter(|p| !p.is_empty()) {
        Some(p) if p != &me.user_name && !privileged => {
            return Err(ApiError::permission_denied(format!(
                "User does not have MANAGE on {} '{full}' and cannot read the permissions of '{p}'.",
                sec.noun()
            )));
        }
        Some(p) => vec![p.clone()],
        None if privileged => ws.principals.iter().map(|p| p.user_name.clone()).collect(),
        None => vec![me.user_name.clone()],
    };
    let mut assignments = Vec::new();
    for name in who {
        let Some(p) = ws.principal(&name) else { continue };
        let privs: Vec<Value> = ws
            .effective_privileges(p, &sec)
            .into_iter()
            .map(|(privilege, from)| match from {
                None => json!({"privilege": privilege}),
                Some(f) => json!({"privilege": privilege, "inherited_from_type": f.kind(), "inherited_from_name": f.full_name()}),
            })
            .collect();
        if !privs.is_empty() {
            assignments.push(json!({"principal": p.user_name, "privileges": privs}));
        }
    }
    let (items, next) = page(assignments, &q, 150)?;
    Ok(listing("privilege_assignments", items, next))
}

pub(super) async fn direct_permissions(
    State(emu): State<Emulator>,
    _caller: Caller,
    Path((kind, full)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let ws = emu.ws();
    let sec = securable(&ws, &kind, &full)?;
    let mut by: Vec<(String, Vec<String>)> = Vec::new();
    for g in ws.grants.iter().filter(|g| g.securable == sec) {
        match by.iter_mut().find(|(p, _)| p == &g.principal) {
            Some((_, v)) => v.push(g.privilege.clone()),
            None => by.push((g.principal.clone(), vec![g.privilege.clone()])),
        }
    }
    let items: Vec<Value> = by
        .into_iter()
        .map(|(p, privs)| match ws.principal(&p) {
            Some(pr) => json!({"principal": p, "principal_id": pr.id.parse::<u64>().unwrap_or(0), "privileges": privs}),
            None => json!({"principal": p, "privileges": privs}),
        })
        .collect();
    Ok(listing("privilege_assignments", items, None))
}
