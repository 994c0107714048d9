-- The broker's own PostgreSQL role: what `istmo db upgrade --grant-role istmo_broker` runs,
-- for operators who grant by hand. Run it as the role that owns the tables (the one that
-- ran `istmo db upgrade`), in the broker's database, after the upgrade:
--
--     psql -v ON_ERROR_STOP=1 -d istmo -f deploy/postgres/broker-role.sql
--
-- Then give the role a password (ALTER ROLE istmo_broker PASSWORD '...') or a client
-- certificate, and point the broker at it:
--
--     ISTMO_DATABASE_URL=postgresql://istmo_broker@db.example:5432/istmo
--
-- The registry's tables are read and written; the audit tables (S-18) and the relay's
-- decision records may only be inserted into and read, so the broker could not rewrite the
-- log or a decision even if the append-only triggers were dropped. Never give this role ownership of the tables or superuser rights: owners and
-- superusers can drop triggers. Another database name or role: edit the two names below, or
-- use `istmo db upgrade --grant-role NAME` with ISTMO_DATABASE_URL pointing at it.
-- (tests/integration/test_postgres_storage.py checks this file against broker/store/roles.py.)

DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'istmo_broker') THEN CREATE ROLE istmo_broker LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS; END IF; END $$;
GRANT CONNECT ON DATABASE istmo TO istmo_broker;
GRANT USAGE ON SCHEMA public TO istmo_broker;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM istmo_broker;
GRANT SELECT, INSERT, UPDATE, DELETE ON admin_identity, agency, assertion_jti, bulletin, community_group, console_link, console_session, directory_change, encryption_key, enrolment_token, group_epoch, group_wrap, forward_request, jurisdiction, meta, nats_user, policy_set, receipt, rejection, rfi, rfi_addressee, signing_key, subscription, withheld_count, withdrawal TO istmo_broker;
GRANT SELECT, INSERT ON agency_set, decision, decision_record, audit_event, log_entry, merkle_node, tree_head TO istmo_broker;
GRANT SELECT ON alembic_version TO istmo_broker;
GRANT USAGE ON SEQUENCE audit_event_seq_seq, directory_change_serial_seq, policy_set_seq_seq TO istmo_broker;
