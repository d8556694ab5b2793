//! SQL warehouses: list, get, start, stop, permissions.

use super::*;

pub(super) fn warehouse_json(emu: &Emulator, ws: &Workspace, id: &str) -> Value {
    let w = &ws.warehouses[id];
    let host = emu.base_url().trim_start_matches("http://").to_string();
    let (hostname, port) =
        host.rsplit_once(':').map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap_or(80))).unwrap_or((host.clone(), 80));
    let creator_id = ws.principal(&w.creator).map(|p| p.id.parse::<u64>().unwrap_or(0)).unwrap_or(0);
    let path = format!("/sql/1.0/warehouses/{id}");
    let size = match w.cluster_size.as_str() {
        "2X-Small" => "XXSMALL",
        "X-Small" => "XSMALL",
        "Small" => "SMALL",
        "Medium" => "MEDIUM",
        "Large" => "LARGE",
        _ => "XLARGE",
    };
    json!({
        "id": w.id,
        "name": w.name,
        "size": size,
        "cluster_size": w.cluster_size,
        "min_num_clusters": 1,
        "max_num_clusters": 1,
        "auto_stop_mins": w.auto_stop_mins,
        "auto_resume": w.auto_resume,
        "creator_name": w.creator,
        "creator_id": creator_id,
        "tags": {},
        "spot_instance_policy": "COST_OPTIMIZED",
        "enable_photon": true,
        "channel": {"name": "CHANNEL_NAME_CURRENT"},
        "enable_serverless_compute": w.serverless,
        "warehouse_type": "PRO",
        "num_clusters": if matches!(w.state, WarehouseState::Running) { 1 } else { 0 },
        "num_active_sessions": w.counters.active_statements,
        "state": w.state.as_str(),
        "jdbc_url": format!("jdbc:spark://{hostname}:{port}/default;transportMode=http;ssl=0;AuthMech=3;httpPath={path};"),
        "odbc_params": {"hostname": hostname, "path": path, "protocol": "http", "port": port},
        "health": {"status": "HEALTHY"},
    })
}

pub(super) fn warehouse_for(emu: &Emulator, caller: &Caller, id: &str) -> Result<(), ApiError> {
    if !is_warehouse_id(id) {
        return Err(ApiError::invalid_parameter(format!("{id} is not a valid endpoint id.")));
    }
    let ws = emu.ws();
    match ws.warehouses.get(id) {
        None => Err(ApiError::not_found("RESOURCE_DOES_NOT_EXIST", format!("Warehouse {id} does not exist."))),
        Some(w) if !w.can_use(&caller.principal) => Err(warehouse_denied(id, &caller.request_id)),
        Some(_) => Ok(()),
    }
}

pub(super) async fn list_warehouses(State(emu): State<Emulator>, caller: Caller) -> Response {
    let ws = emu.ws();
    let list: Vec<Value> =
        ws.warehouses.values().filter(|w| w.can_use(&caller.principal)).map(|w| warehouse_json(&emu, &ws, &w.id)).collect();
    ok(json!({"warehouses": list}))
}

pub(super) async fn get_warehouse(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    warehouse_for(&emu, &caller, &id)?;
    let ws = emu.ws();
    Ok(ok(warehouse_json(&emu, &ws, &id)))
}

pub(super) async fn start_warehouse(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    warehouse_for(&emu, &caller, &id)?;
    emu.start_warehouse(&id, false);
    Ok(ok(json!({})))
}

pub(super) async fn stop_warehouse(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    warehouse_for(&emu, &caller, &id)?;
    let can_manage = emu.ws().warehouses.get(&id).is_some_and(|w| w.can_manage(&caller.principal));
    if !can_manage {
        return Err(ApiError::permission_denied(format!(
            "You do not have permission to stop warehouse {id}. Stopping needs CAN MANAGE or ownership."
        )));
    }
    emu.stop_warehouse(&id);
    Ok(ok(json!({})))
}

pub(super) async fn warehouse_permissions(
    State(emu): State<Emulator>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    warehouse_for(&emu, &caller, &id)?;
    let ws = emu.ws();
    let w = &ws.warehouses[&id];
    if !w.can_manage(&caller.principal) {
        return Err(ApiError::permission_denied(format!(
            "{} does not have Manage permissions on /sql/warehouses/{id}. Please contact the owner or an administrator for access.",
            caller.principal.user_name
        )));
    }
    let acl: Vec<Value> = w
        .acl
        .iter()
        .map(|(who, level)| {
            let mut e = Map::new();
            match ws.principal(who) {
                Some(p) if p.kind == PrincipalKind::ServicePrincipal => {
                    e.insert("service_principal_name".into(), json!(p.user_name));
                    e.insert("display_name".into(), json!(p.display_name));
                }
                Some(p) => {
                    e.insert("user_name".into(), json!(p.user_name));
                    e.insert("display_name".into(), json!(p.display_name));
                }
                None => {
                    e.insert("group_name".into(), json!(who));
                }
            }
            e.insert("all_permissions".into(), json!([{"permission_level": level, "inherited": false}]));
            Value::Object(e)
        })
        .chain(std::iter::once(json!({
            "group_name": "admins",
            "all_permissions": [{"permission_level": "CAN_MANAGE", "inherited": true, "inherited_from_object": ["/sql/warehouses/"]}]
        })))
        .collect();
    Ok(ok(json!({"object_id": format!("/sql/warehouses/{id}"), "object_type": "warehouses", "access_control_list": acl})))
}
