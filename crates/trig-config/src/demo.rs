//! The config for the emulator's demo workspace, in one place: the `demo`
//! command writes it, and the tests and benches start from it. Each part is
//! a TOML table as text; a caller appends keys to a pipeline's table (they
//! follow its header) or whole tables of its own.

/// `[store]` with `url`.
pub fn store(url: &str) -> String {
    format!("[store]\nurl = \"{url}\"\n")
}

/// `[connections.<name>]` for a local workspace at `workspace_url` (its host
/// allow-listed), the token read from `token_file`, catalog `main`.
pub fn connection(name: &str, workspace_url: &str, warehouse_id: &str, host: &str, token_file: &str) -> String {
    format!(
        "\n[connections.{name}]\nworkspace_url = \"{workspace_url}\"\nhttp_path = \"/sql/1.0/warehouses/{warehouse_id}\"\n\
         token = {{ file = \"{token_file}\" }}\ndefault_catalog = \"main\"\nallow_hosts = [\"{host}\"]\n"
    )
}

/// The demo's organisations: `main.crm.organisations`.
pub fn organisations(name: &str, connection: &str) -> String {
    format!(
        "\n[pipelines.{name}]\nconnection = \"{connection}\"\nkind = \"organisations\"\nsource = \"crm.organisations\"\n\
         id = \"organisation_id\"\nname = \"name\"\ndomain = \"domain\"\n"
    )
}

/// The demo's people: `main.crm.people`, linked to their organisation.
pub fn people(name: &str, connection: &str) -> String {
    format!(
        "\n[pipelines.{name}]\nconnection = \"{connection}\"\nkind = \"people\"\nsource = \"crm.people\"\n\
         id = \"user_id\"\nname = \"name\"\nemail = \"email\"\norganisation_id = \"organisation_id\"\n"
    )
}

/// The demo's events: `main.product.events_v` by external user id, with an
/// email column, two listed properties and a two-hour lookback.
pub fn events(name: &str, connection: &str) -> String {
    format!(
        "\n[pipelines.{name}]\nconnection = \"{connection}\"\nkind = \"events\"\nsource = \"product.events_v\"\n\
         event_id = \"event_id\"\nevent_name = \"event_name\"\ntimestamp = \"event_ts\"\nuser_id = \"user_id\"\n\
         email = \"email\"\nproperties = [\"plan\", \"platform\"]\nlookback = \"2h\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_make_a_valid_config() {
        let text = format!(
            "{}{}{}{}{}",
            store("sqlite://trig.db"),
            connection("demo", "http://127.0.0.1:8765", "a1b2c3d4e5f60718", "127.0.0.1:8765", "token"),
            organisations("orgs", "demo"),
            people("people", "demo") + "updated_at = \"updated_at\"\n",
            events("events", "demo") + "properties_column = \"properties\"\n",
        );
        let c = crate::Config::parse(&text, std::path::Path::new("/tmp/trig.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.pipelines.len(), 3);
        assert_eq!(c.pipeline("events").unwrap().source.full_name(), "main.product.events_v");
    }
}
