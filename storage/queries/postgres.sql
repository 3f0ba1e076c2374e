-- Named PostgreSQL queries. Each block starts with `-- name: <name>`; parameters are %(name)s.

-- name: database_exists
SELECT 1 AS found FROM pg_database WHERE datname = %(name)s;

-- name: migration_lock
SELECT pg_advisory_xact_lock(7426001) AS locked;

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    name TEXT PRIMARY KEY,
    applied_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

-- name: applied_migrations
SELECT name FROM schema_migrations ORDER BY name;

-- name: record_migration
INSERT INTO schema_migrations (name) VALUES (%(name)s);
