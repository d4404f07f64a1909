-- What `pgwi run` sends per run on a migrated database (app/src/job.rs, app/src/migration.rs and
-- sea-orm-migration's status check), taken from its statement log (RUST_LOG=sqlx::query=debug), for
-- `psql -f` in the job bench (app/benches/job.rs): the baseline runs the same statements, over the same TLS
-- and authentication, on the same database. Update it when the job's SQL changes.

-- Migrations: one transaction under a transaction-scoped advisory lock; sea-orm-migration makes sure its
-- table exists (three times, as it does) and reads which migrations are applied. The lock and the reset
-- go as one query (`\;`), as pgwi sends them.
BEGIN;
SET LOCAL statement_timeout = 0;
SELECT pg_advisory_xact_lock(1885828969) \; SET LOCAL statement_timeout TO DEFAULT;
CREATE TABLE IF NOT EXISTS "seaql_migrations" ( "version" varchar NOT NULL PRIMARY KEY, "applied_at" bigint NOT NULL );
CREATE TABLE IF NOT EXISTS "seaql_migrations" ( "version" varchar NOT NULL PRIMARY KEY, "applied_at" bigint NOT NULL );
CREATE TABLE IF NOT EXISTS "seaql_migrations" ( "version" varchar NOT NULL PRIMARY KEY, "applied_at" bigint NOT NULL );
SELECT "version", "applied_at" FROM "seaql_migrations" ORDER BY "version" ASC;
COMMIT;

-- The run record (SeaORM's insert returns the whole row).
INSERT INTO "job_runs" ("credential_kind", "application_name") VALUES ('static-password', 'psql') RETURNING "id", "started_at", "finished_at", "outcome", "rows_written", "credential_kind", "application_name", "error" \gset

-- The three rows (one multi-row upsert) and the removal of any other, in one transaction.
BEGIN;
SELECT pg_backend_pid() AS pid;
INSERT INTO "inventory" ("name", "quantity") VALUES ('banana', 150), ('orange', 154), ('apple', 100) ON CONFLICT ("name") DO UPDATE SET "quantity" = "excluded"."quantity";
DELETE FROM "inventory" WHERE "inventory"."name" NOT IN ('banana', 'orange', 'apple');
COMMIT;

-- The outcome.
UPDATE "job_runs" SET "finished_at" = CURRENT_TIMESTAMP, "outcome" = 'succeeded', "rows_written" = 3, "error" = NULL WHERE "job_runs"."id" = :id;
