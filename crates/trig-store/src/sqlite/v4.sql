-- Version 4: the service's records.
ALTER TABLE tenants ADD COLUMN display_name TEXT;

-- API tokens of `serve`: only a token's SHA-256 is kept; the token is shown once, when it is made.
CREATE TABLE api_tokens (
    id         INTEGER PRIMARY KEY,
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id),
    role       TEXT    NOT NULL CHECK (role IN ('admin', 'representative')),
    hash       TEXT    NOT NULL UNIQUE,
    label      TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
