-- Least privilege (issue 18): one login role per service, holding only what its code
-- runs. The roles and their passwords are made by whoever deploys (stack/postgres.py,
-- ops/compose/postgres-init.sh); here they are only created, without login, when missing,
-- so that a database of a superuser (a test container) migrates too. The owner of
-- the schema (who runs this file) keeps every right; no service role creates or alters
-- anything, and none but the command API reads the students' keys by their hash.
DO $$
DECLARE
    role text;
BEGIN
    FOREACH role IN ARRAY ARRAY['command_api', 'projector', 'notifier', 'query_api'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role);
        END IF;
    END LOOP;
    -- Only these roles (and the owner) may connect; no temporary tables for anyone.
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO command_api, projector, notifier, query_api',
                   current_database());
END
$$;

-- PostgreSQL 15 already denies CREATE on public to PUBLIC; older servers do not.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO command_api, projector, notifier, query_api;

-- Every service waits for the migrations it knows (migrations.apply, read-only check).
GRANT SELECT ON schema_migrations TO command_api, projector, notifier, query_api;

-- Command API: the key store (a key per student, found by hash; deleted by an erasure)
-- and the erasure requests. No UPDATE of keys: a key is created once and deleted once.
GRANT SELECT, INSERT, DELETE ON student_keys TO command_api;
GRANT SELECT, INSERT, UPDATE ON erasures TO command_api;
-- A key reference per sign-up, and the record of each keyed sign-up request (0005).
-- Their rows go with the key by ON DELETE CASCADE, which PostgreSQL runs as the
-- tables' owner: no DELETE here.
GRANT SELECT, INSERT ON signup_keys TO command_api;
GRANT SELECT, INSERT, UPDATE ON signup_requests TO command_api;

-- Notifier: a key by its id to open a student's sealed address, never the hash that
-- links a key to an address; what it sent, and the courses' titles.
GRANT SELECT (key_id, key) ON student_keys TO notifier;
-- A decision names its key by the sign-up's reference. While sending, the notifier
-- holds the key's in-use advisory lock (shared), which needs no grant.
GRANT SELECT (key_ref, key_id) ON signup_keys TO notifier;
GRANT SELECT, INSERT ON sent_notifications TO notifier;
GRANT SELECT, INSERT, UPDATE ON notifier_courses TO notifier;

-- Projector: writes the views with its positions; the generation row is its barrier
-- against a replay's swap (read FOR SHARE/UPDATE, hence UPDATE).
GRANT SELECT, INSERT, UPDATE, DELETE ON projection_offsets TO projector;
GRANT SELECT, INSERT, UPDATE ON projection_generations TO projector;

-- Query API: an erasure's status, not whom it erased.
GRANT SELECT (erasure_id, status, completed_at) ON erasures TO query_api;

-- The views are replaced wholesale by a replay's swap (projections/store.py: swap),
-- and a new table has no grants: the swap calls this function again, so the grants on
-- the views live here only.
CREATE FUNCTION grant_view_privileges() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    GRANT SELECT, INSERT, UPDATE, DELETE ON signup_decisions, course_stats, global_stats,
        course_birth_dates, global_birth_dates TO projector;
    GRANT SELECT ON signup_decisions, course_stats, global_stats, course_birth_dates,
        global_birth_dates TO query_api;
END
$$;
REVOKE ALL ON FUNCTION grant_view_privileges() FROM PUBLIC;
SELECT grant_view_privileges();

-- The command API may not VACUUM a table it does not own (PostgreSQL 15 has no MAINTAIN
-- privilege), so an erased key's dead row is reclaimed by autovacuum: at its next round
-- (autovacuum_naptime, a minute by default) after any delete on this table.
ALTER TABLE student_keys SET (autovacuum_vacuum_threshold = 0,
                              autovacuum_vacuum_scale_factor = 0);
