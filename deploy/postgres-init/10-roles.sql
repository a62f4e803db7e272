-- Least-privilege database roles. The postgres image runs this file once, as the superuser POSTGRES_USER in the
-- database POSTGRES_DB, when it initialises an empty data directory; running it again (psql -f) is safe and also
-- brings existing tables under the same grants (docs/deploy.md, "Security").
--
-- DJ_USER    the service's role (scheduler, workers, init, demo): logs in, owns the schemas and tables it
--            declares, and nothing else: no superuser, no CREATEDB, no CREATEROLE.
-- MEI_DB_MEMBER_ROLE  a group role (NOLOGIN) for lab members, who log in as roles of their own made members of
--            it: they read everything; insert into Lookup and Manual tables (methods, seeds, nnfabrik entries);
--            read and write the jobs tables (~~table), which is what enqueue, cancel and retry do; they create
--            nothing and never write a Computed or Imported table (the workers' results).
--
-- Names and the password come from the environment (\getenv), never from a command line.
\set ON_ERROR_STOP on
\getenv service DJ_USER
\getenv service_password DJ_PASS
\getenv members MEI_DB_MEMBER_ROLE

-- Carried into the DO blocks below as settings: psql does not substitute variables inside dollar quotes.
SELECT set_config('mei.service', :'service', false) AS service,
       set_config('mei.members', :'members', false) AS members \gset
DO $$
BEGIN
    IF current_setting('mei.service') IN ('', current_user)
            OR current_setting('mei.members') IN ('', current_user, current_setting('mei.service')) THEN
        RAISE EXCEPTION 'DJ_USER (%) and MEI_DB_MEMBER_ROLE (%) must be set, differ, and not be POSTGRES_USER (%)',
            current_setting('mei.service'), current_setting('mei.members'), current_user;
    END IF;
END $$;

SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'service') AS create_service,
       NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'members') AS create_members \gset
\if :create_service
CREATE ROLE :"service";
\endif
\if :create_members
CREATE ROLE :"members";
\endif
ALTER ROLE :"service" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'service_password';
ALTER ROLE :"members" WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

-- Only the service and the members connect. The service creates schemas: DataJoint declares each of its schemas
-- as one.
SELECT current_database() AS database \gset
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, CREATE ON DATABASE :"database" TO :"service";
GRANT CONNECT ON DATABASE :"database" TO :"members";

-- Members read every schema and table the service creates from now on. REFERENCES because information_schema
-- shows a table's constraints, where DataJoint finds primary keys, only to roles with a privilege beyond SELECT;
-- it lets a role add foreign keys to a table, and members cannot create tables.
ALTER DEFAULT PRIVILEGES FOR ROLE :"service" GRANT USAGE ON SCHEMAS TO :"members";
ALTER DEFAULT PRIVILEGES FOR ROLE :"service" GRANT SELECT, REFERENCES ON TABLES TO :"members";

-- ... and write some of them, chosen by DataJoint's table names: `#name` (Lookup), `name` and `master__part`
-- (Manual), `~~name` (a table's jobs); never `_name` or `__name` (Imported, Computed) nor `~lineage`.
CREATE OR REPLACE FUNCTION public.mei_grant_to_members(tables regclass[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog SET mei.members = :'members' AS $$
DECLARE
    created record;
BEGIN
    FOR created IN SELECT oid::regclass AS name, relname FROM pg_class WHERE oid = ANY (tables) LOOP
        IF starts_with(created.relname, '~~') THEN
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %I', created.name,
                current_setting('mei.members'));
        ELSIF NOT (starts_with(created.relname, '~') OR starts_with(created.relname, '_')) THEN
            EXECUTE format('GRANT INSERT ON %s TO %I', created.name, current_setting('mei.members'));
        END IF;
    END LOOP;
END $$;

REVOKE EXECUTE ON FUNCTION public.mei_grant_to_members(regclass[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.mei_grant_to_members(regclass[]) TO :"service";

-- Each table as it is created: the grant runs as its creator, the service, which owns the table.
CREATE OR REPLACE FUNCTION public.mei_grant_on_create() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM public.mei_grant_to_members(array_agg(objid::regclass))
    FROM pg_event_trigger_ddl_commands() WHERE object_type = 'table';
END $$;
DROP EVENT TRIGGER IF EXISTS mei_grant_on_create;
CREATE EVENT TRIGGER mei_grant_on_create ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
    EXECUTE FUNCTION public.mei_grant_on_create();

-- What the service created before this run (a second run, e.g. for a new MEI_DB_MEMBER_ROLE).
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', nspname, :'members') FROM pg_namespace
WHERE nspowner = :'service'::regrole \gexec
SELECT format('GRANT SELECT, REFERENCES ON %s TO %I', oid::regclass, :'members') FROM pg_class
WHERE relowner = :'service'::regrole AND relkind IN ('r', 'p') \gexec
SELECT public.mei_grant_to_members(array_agg(oid::regclass)) FROM pg_class
WHERE relowner = :'service'::regrole AND relkind IN ('r', 'p') \g /dev/null
