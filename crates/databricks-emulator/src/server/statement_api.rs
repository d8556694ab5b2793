//! The Statement Execution API 2.0: submit, poll, cancel, result chunks, and the external-link downloads.

use super::*;

pub(super) async fn submit_statement(State(emu): State<Emulator>, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let m = parse_json(&body)?;
    let warehouse_id =
        opt_str(&m, "warehouse_id")?.ok_or_else(|| ApiError::bad_request("Required field is not specified: warehouse_id."))?;
    let statement = opt_str(&m, "statement")?.ok_or_else(|| ApiError::bad_request("Required field is not specified: statement."))?;
    if statement.len() > 16 << 20 {
        return Err(ApiError::invalid_parameter("The statement field is longer than 16 MiB."));
    }
    let wait = match opt_str(&m, "wait_timeout")? {
        None => 10,
        Some(w) => {
            let secs: u64 = w
                .strip_suffix('s')
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| ApiError::invalid_parameter("Error while parsing type: duration."))?;
            if secs != 0 && !(5..=50).contains(&secs) {
                return Err(ApiError::invalid_parameter(
                    "The wait_timeout field must be 0 seconds (disables wait), or between 5 seconds and 50 seconds.",
                )
                .with_details(
                    json!([{"@type": "type.googleapis.com/google.rpc.RequestInfo", "request_id": caller.request_id, "serving_data": ""}]),
                ));
            }
            secs
        }
    };
    let cancel_on_timeout = opt_str(&m, "on_wait_timeout")? == Some("CANCEL");
    let disposition = match opt_str(&m, "disposition")? {
        Some("EXTERNAL_LINKS") => Disposition::ExternalLinks,
        _ => Disposition::Inline,
    };
    let format = match opt_str(&m, "format")? {
        Some("ARROW_STREAM") => Format::ArrowStream,
        Some("CSV") => Format::Csv,
        _ => Format::JsonArray,
    };
    if disposition == Disposition::ExternalLinks && emu.faults().refuse_external_links() {
        emu.inner.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::invalid_parameter(
            "The EXTERNAL_LINKS disposition is not enabled for this workspace. Use disposition INLINE.",
        ));
    }
    if disposition == Disposition::Inline && format != Format::JsonArray {
        return Err(ApiError::invalid_parameter(
            "Incompatible parameters: The format field must be JSON_ARRAY when the disposition field is INLINE.",
        ));
    }
    let row_limit = opt_i64(&m, "row_limit")?;
    if row_limit.is_some_and(|r| !(0..=i32::MAX as i64).contains(&r)) {
        return Err(ApiError::invalid_parameter("The row_limit field must be between 0 and 2147483647."));
    }
    let byte_limit = opt_i64(&m, "byte_limit")?;
    let max_bytes: i64 = if disposition == Disposition::Inline { 25 << 20 } else { 100 << 30 };
    if byte_limit.is_some_and(|b| b < 1 || b > max_bytes) {
        return Err(ApiError::invalid_parameter(format!("The byte_limit field must be between 1 and {max_bytes}.")));
    }
    let lz4 = opt_str(&m, "result_compression")? == Some("LZ4_FRAME") && format == Format::ArrowStream;
    let params: Vec<Param> = match m.get("parameters") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| wrong_type("parameters", "an array of {name, value, type}"))?,
    };
    if m.contains_key("query_tags") && emu.faults().refuse_query_tags() {
        emu.inner.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::invalid_parameter("Invalid parameter: query_tags is not a recognized field of this request."));
    }
    let query_tags: Vec<(String, Option<String>)> = match m.get("query_tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut tags: Vec<(String, Option<String>)> = Vec::new();
            for it in items {
                let key = it.get("key").and_then(Value::as_str).ok_or_else(|| wrong_type("query_tags", "an array of {key, value}"))?;
                let value = it.get("value").and_then(Value::as_str).map(str::to_string);
                if let Some(t) = tags.iter_mut().find(|(k, _)| k == key) {
                    t.1 = value;
                } else {
                    tags.push((key.to_string(), value));
                }
            }
            tags.truncate(20);
            tags
        }
        Some(_) => return Err(wrong_type("query_tags", "an array of {key, value}")),
    };
    if !is_warehouse_id(warehouse_id) {
        return Err(ApiError::invalid_parameter(format!("{warehouse_id} is not a valid endpoint id.")));
    }
    let can_use = emu.ws().warehouses.get(warehouse_id).is_some_and(|w| w.can_use(&caller.principal));
    if !can_use {
        return Err(warehouse_denied(warehouse_id, &caller.request_id));
    }
    let request = StmtRequest {
        statement: statement.to_string(),
        warehouse_id: warehouse_id.to_string(),
        principal: caller.principal.user_name.clone(),
        disposition,
        format,
        lz4,
        query_tags,
        row_limit: row_limit.map(|r| r as u64),
        byte_limit: byte_limit.map(|b| b as u64),
        catalog: opt_str(&m, "catalog")?.map(str::to_string),
        schema: opt_str(&m, "schema")?.map(str::to_string),
        params,
    };
    let stmt = emu.submit(request);
    if wait > 0 {
        stmt.wait(Duration::from_secs(wait)).await;
        if !stmt.state().is_terminal() && cancel_on_timeout {
            stmt.cancel.cancel();
            stmt.transition(StmtState::Canceled, None, None);
        }
    }
    Ok(ok(statement_json(&emu, &stmt)))
}

/// Parses a statement id from the path (Databricks insists on a UUID).
pub(super) fn statement_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id).map(|u| u.to_string()).map_err(|_| ApiError::invalid_parameter("Error while parsing type: statement_id."))
}

pub(super) fn statement_not_found(id: &str, request_id: &str) -> ApiError {
    ApiError::not_found("NOT_FOUND", format!("The statement {id} was not found.")).with_details(resource_details(
        "statement",
        id,
        "does not exist",
        request_id,
    ))
}

/// The caller's own statement (others' statements do not exist for them).
pub(super) fn own_statement(emu: &Emulator, caller: &Caller, id: &str) -> Result<std::sync::Arc<Statement>, ApiError> {
    let id = statement_id(id)?;
    match emu.statement(&id) {
        Some(s) if s.request.principal == caller.principal.user_name => Ok(s),
        _ => Err(statement_not_found(&id, &caller.request_id)),
    }
}

pub(super) async fn get_statement(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let stmt = own_statement(&emu, &caller, &id)?;
    Ok(ok(statement_json(&emu, &stmt)))
}

/// `POST .../cancel` and `DELETE ...`: both end the caller's statement if it
/// is still running, and both answer `{}` for any well-formed id, as Databricks does.
pub(super) async fn cancel_statement(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = statement_id(&id)?;
    if let Some(s) = emu.statement(&id).filter(|s| s.request.principal == caller.principal.user_name) {
        s.cancel.cancel();
        s.transition(StmtState::Canceled, None, None);
    }
    Ok(ok(json!({})))
}

pub(super) async fn get_chunk(
    State(emu): State<Emulator>,
    caller: Caller,
    Path((id, index)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let stmt = own_statement(&emu, &caller, &id)?;
    emu.inner.counters.chunk_requests.fetch_add(1, Ordering::Relaxed);
    let index: usize = index.parse().map_err(|_| ApiError::invalid_parameter("Error while parsing type: chunk_index."))?;
    let (state, result) = {
        let g = stmt.lock();
        (g.state, g.result.clone())
    };
    let Some(rs) = result.filter(|_| state == StmtState::Succeeded) else {
        return Err(ApiError::not_found(
            "NOT_FOUND",
            format!("The result of statement {} cannot be fetched: its state is {}.", stmt.id, state.as_str()),
        )
        .with_details(resource_details(
            "statement",
            &stmt.id,
            "the statement state should be SUCCEEDED before you can start fetching the result",
            &caller.request_id,
        )));
    };
    if index >= rs.chunks.len() {
        return Err(ApiError::invalid_parameter(format!("The chunk_index {index} is out of bounds.")));
    }
    Ok(ok(result_data(&emu, &stmt, &rs, index)))
}

/// A statement as the API shows it: `statement_id`, `status`, and for a
/// success the `manifest` and the first chunk.
pub(super) fn statement_json(emu: &Emulator, stmt: &Statement) -> Value {
    let status = stmt.status_json();
    let (state, result) = {
        let g = stmt.lock();
        (g.state, g.result.clone())
    };
    let mut out = Map::new();
    out.insert("statement_id".into(), json!(stmt.id));
    out.insert("status".into(), status);
    if state == StmtState::Succeeded
        && let Some(rs) = result
    {
        let inline = stmt.request.disposition == Disposition::Inline;
        out.insert("manifest".into(), rs.manifest(inline));
        let first = if rs.chunks.is_empty() { json!({}) } else { result_data(emu, stmt, &rs, 0) };
        out.insert("result".into(), first);
    }
    Value::Object(out)
}

/// One chunk's `ResultData`: rows inline, or a freshly signed external link.
pub(super) fn result_data(emu: &Emulator, stmt: &Statement, rs: &ResultSet, index: usize) -> Value {
    let chunk = &rs.chunks[index];
    let mut d = Map::new();
    d.insert("chunk_index".into(), json!(index));
    d.insert("row_offset".into(), json!(chunk.row_offset));
    d.insert("row_count".into(), json!(chunk.row_count));
    let next =
        (index + 1 < rs.chunks.len()).then(|| (index + 1, format!("/api/2.0/sql/statements/{}/result/chunks/{}", stmt.id, index + 1)));
    if stmt.request.disposition == Disposition::Inline {
        let rows: Value = serde_json::from_slice(&chunk.body).unwrap_or(Value::Array(Vec::new()));
        d.insert("data_array".into(), rows);
        if let Some((i, link)) = next {
            d.insert("next_chunk_index".into(), json!(i));
            d.insert("next_chunk_internal_link".into(), json!(link));
        }
        return Value::Object(d);
    }
    d.insert("byte_count".into(), json!(chunk.body.len()));
    if let Some((i, link)) = next {
        d.insert("next_chunk_index".into(), json!(i));
        d.insert("next_chunk_internal_link".into(), json!(link));
    }
    let (url, expiration) = sign_link(emu, &stmt.id, index);
    d.insert("external_link".into(), json!(url));
    d.insert("expiration".into(), json!(expiration));
    json!({"external_links": [Value::Object(d)]})
}

pub(super) fn link_signature(secret: &str, id: &str, index: usize, issued_ms: i64, ttl_ms: i64) -> String {
    let mut h = Sha256::new();
    h.update(format!("{secret}\n{id}\n{index}\n{issued_ms}\n{ttl_ms}").as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A pre-signed URL for one chunk, valid for the configured link lifetime
/// (or already expired when a fault says so).
pub(super) fn sign_link(emu: &Emulator, id: &str, index: usize) -> (String, String) {
    let now = Utc::now().timestamp_millis();
    let (issued, ttl) = if emu.faults().expire_link() {
        emu.inner.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
        (now - 1000, 0)
    } else {
        (now, emu.config().link_ttl.as_millis() as i64)
    };
    let sig = link_signature(&emu.inner.link_secret, id, index, issued, ttl);
    let url = format!(
        "{}/emulator/files/{id}/{index}?X-Databricks-Issued={issued}&X-Databricks-TTL={ttl}&X-Databricks-Signature={sig}",
        emu.base_url()
    );
    let expiration = chrono::DateTime::from_timestamp_millis(issued + ttl).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    (url, expiration)
}

pub(super) fn storage_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>");
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    r
}

/// `GET` of an external link: no Authorization header allowed, a valid
/// unexpired signature required; serves the chunk's bytes.
pub(super) async fn download_chunk(
    State(emu): State<Emulator>,
    Path((id, index)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        return storage_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Databricks-Signature query parameter or the Authorization header should be specified",
        );
    }
    let (Some(issued), Some(ttl), Some(sig), Ok(index)) = (
        q.get("X-Databricks-Issued").and_then(|v| v.parse::<i64>().ok()),
        q.get("X-Databricks-TTL").and_then(|v| v.parse::<i64>().ok()),
        q.get("X-Databricks-Signature"),
        index.parse::<usize>(),
    ) else {
        return storage_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Query-string authentication requires the Signature, Issued and TTL parameters",
        );
    };
    if link_signature(&emu.inner.link_secret, &id, index, issued, ttl) != *sig {
        return storage_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    if Utc::now().timestamp_millis() >= issued + ttl {
        return storage_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    let rs = emu.statement(&id).and_then(|s| {
        let g = s.lock();
        g.result.clone().filter(|_| g.state == StmtState::Succeeded)
    });
    let Some(chunk) = rs.as_ref().and_then(|rs| rs.chunks.get(index)) else {
        return storage_error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.");
    };
    emu.inner.counters.link_downloads.fetch_add(1, Ordering::Relaxed);
    emu.inner.counters.link_bytes.fetch_add(chunk.body.len() as u64, Ordering::Relaxed);
    let content_type = match rs.as_ref().map(|r| r.format) {
        Some(Format::ArrowStream) => "application/vnd.apache.arrow.stream",
        Some(Format::Csv) => "text/csv",
        _ => "application/json",
    };
    let mut r = (StatusCode::OK, Body::from(chunk.body.clone())).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(chunk.body.len()));
    r
}
