-- Version 2: the service's records (the SQLite store's version 4).
ALTER TABLE tenants ADD COLUMN display_name TEXT;

-- API tokens of `serve`: only a token's SHA-256 is kept; the token is shown once, when it is made.
CREATE TABLE api_tokens (
    id         BIGSERIAL PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id),
    role       TEXT   NOT NULL CHECK (role IN ('admin', 'representative')),
    hash       TEXT   NOT NULL UNIQUE,
    label      TEXT   NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
