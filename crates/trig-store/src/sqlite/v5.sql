-- Version 5: the pages' sign-ins. A session (its cookie) or a one-time login
-- link (its code) is known here by the SHA-256 of its secret only; the secret
-- itself is never stored.
CREATE TABLE web_sessions (
    hash       TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL CHECK (kind IN ('session', 'link')),
    token_id   INTEGER NOT NULL REFERENCES api_tokens (id),
    -- the tenant a representative works on (an admin's is their token's)
    tenant_id  INTEGER REFERENCES tenants (id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);
