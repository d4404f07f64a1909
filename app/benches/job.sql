-- What `pgwi run` sends per run on a migrated database (app/src/job.rs, app/src/migration.rs and
-- sea-orm-migration's status check), for `psql -f` in the job bench (app/benches/job.rs): the baseline runs
-- the same statements, over the same TLS and authentication, on the same database.

-- Connected: pgwi reads the server version on its first connection.
SHOW server_version;

-- Migrations: one transaction under a transaction-scoped advisory lock; sea-orm-migration makes sure its
-- table exists (three times, as it does) and reads which migrations are applied.
BEGIN;
SET LOCAL statement_timeout = 0;
SELECT pg_advisory_xact_lock(1885828969);
SET LOCAL statement_timeout TO DEFAULT;
CREATE TABLE IF NOT EXISTS "seaql_migrations" ( "version" varchar NOT NULL PRIMARY KEY, "applied_at" bigint NOT NULL );
CREATE TABLE IF NOT EXISTS "seaql_migrations" ( "version" varchar NOT NULL PRIMARY KEY, "applied_at" bigint NOT NULL );
CREATE TABLE IF NOT EXISTS "seaql_migrations" ( "version" varchar NOT NULL PRIMARY KEY, "applied_at" bigint NOT NULL );
SELECT "seaql_migrations"."version", "seaql_migrations"."applied_at" FROM "seaql_migrations" ORDER BY "seaql_migrations"."version" ASC;
COMMIT;

-- The run record.
SELECT current_setting('application_name');
INSERT INTO job_runs (credential_kind, application_name) VALUES ('static-password', 'psql') RETURNING id \gset
SELECT pg_backend_pid();

-- The three rows and the removal of any other, in one transaction.
BEGIN;
INSERT INTO inventory (name, quantity) VALUES ('banana', 150) ON CONFLICT (name) DO UPDATE SET quantity = EXCLUDED.quantity;
INSERT INTO inventory (name, quantity) VALUES ('orange', 154) ON CONFLICT (name) DO UPDATE SET quantity = EXCLUDED.quantity;
INSERT INTO inventory (name, quantity) VALUES ('apple', 100) ON CONFLICT (name) DO UPDATE SET quantity = EXCLUDED.quantity;
DELETE FROM inventory WHERE name <> ALL(ARRAY['banana', 'orange', 'apple']);
COMMIT;

-- The outcome.
UPDATE job_runs SET finished_at = now(), outcome = 'succeeded', rows_written = 3, error = NULL WHERE id = :id;
