#!/usr/bin/env python3
"""The original demo's CronJob job, as `task bench` measures it against `pgwi run` (figure a).

What the original Python job did, minus getting an Entra token with azure-identity (here the password is
given, as for pgwi and psql in the bench): connect with psycopg2, create the `inventory` table if needed, insert
banana 150, orange 154 and apple 100, commit. Configured like the original by DBHOST (host or host:port),
DBNAME, DBUSER and SSL_MODE, plus PGPASSWORD and PGSSLROOTCERT, which libpq reads itself.
"""

import os

import psycopg2

host, _, port = os.environ["DBHOST"].partition(":")
conn = psycopg2.connect(
    host=host,
    port=port or "5432",
    dbname=os.environ["DBNAME"],
    user=os.environ["DBUSER"],
    sslmode=os.environ.get("SSL_MODE", "require"),
)
cursor = conn.cursor()
cursor.execute(
    "CREATE TABLE IF NOT EXISTS inventory (id serial PRIMARY KEY, name VARCHAR(50), quantity INTEGER);"
)
for name, quantity in (("banana", 150), ("orange", 154), ("apple", 100)):
    cursor.execute("INSERT INTO inventory (name, quantity) VALUES (%s, %s);", (name, quantity))
conn.commit()
cursor.close()
conn.close()
