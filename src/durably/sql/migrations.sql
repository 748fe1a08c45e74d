-- Creating the schema and applying migrations (see storage/migrations.py).
-- `{schema}` is replaced by the quoted schema name; values are always bound parameters.

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: migrations_record_literal
-- The same record with literal values, for `durably db sql` to print.
INSERT INTO {schema}.migrations (version, name) VALUES ({version}, '{name}');

-- name: migrations_bootstrap
CREATE TABLE IF NOT EXISTS {schema}.migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT version FROM {schema}.migrations ORDER BY version;

-- name: migrations_record
INSERT INTO {schema}.migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: migrations_lock
SELECT pg_advisory_xact_lock(%(namespace)s, -1);

-- name: schema_exists
SELECT to_regclass(%(table)s) IS NOT NULL;
