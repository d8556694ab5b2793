-- Version 4: a second people counter, moved whenever a person with an external
-- id is created or a person gains one (any writer, any process), so a process that
-- remembers which identifiers have no person knows when to forget them.
ALTER TABLE tenants ADD COLUMN people_added BIGINT NOT NULL DEFAULT 0;
