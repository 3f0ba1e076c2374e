-- Named ClickHouse queries. Each block starts with `-- name: <name>`; parameters are {name:Type}.

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    name String,
    applied_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree
ORDER BY name;

-- name: applied_migrations
SELECT DISTINCT name FROM schema_migrations ORDER BY name;
