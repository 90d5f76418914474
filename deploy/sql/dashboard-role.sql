-- The dashboard's database role: least privilege (psql variables: role, password, db).
-- It may log in and use the public schema. It gets SELECT and INSERT on prediction_logs, USAGE
-- on its id sequence and SELECT on alembic_version once the owner has created them:
-- `python -m digitlib.migrations upgrade --grant-to <role>` (make migrate GRANT_TO=<role>).
-- No UPDATE, DELETE, TRUNCATE, DDL or other tables: a compromised dashboard can add rows, no more.
CREATE ROLE :"role" LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"role";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"role";
