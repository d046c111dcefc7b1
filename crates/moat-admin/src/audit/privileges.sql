SELECT r.rolname::text AS role, n.nspname::text AS schema, c.relname::text AS name,
       has_schema_privilege(r.oid, n.oid, 'USAGE') AS usage,
       has_table_privilege(r.oid, c.oid, 'SELECT') AS select,
       has_table_privilege(r.oid, c.oid, 'INSERT') AS insert,
       has_table_privilege(r.oid, c.oid, 'UPDATE') AS update,
       has_table_privilege(r.oid, c.oid, 'DELETE') AS delete
FROM pg_roles r CROSS JOIN pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE r.rolname = ANY($1) AND n.nspname = ANY($2) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
