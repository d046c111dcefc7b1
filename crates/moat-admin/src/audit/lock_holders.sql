-- Sessions (other than this one) holding a lock that blocks reading or writing relation
-- $1, or a relation that $1 (a view) reads.
SELECT DISTINCT coalesce(a.usename::text, '?') AS role, l.pid AS pid
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.granted
  AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
  AND (l.relation = $1::pg_catalog.int8::pg_catalog.oid
       OR l.relation IN (SELECT d.refobjid FROM pg_catalog.pg_depend d
                         JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.oid = d.objid
                         WHERE r.ev_class = $1::pg_catalog.int8::pg_catalog.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass))
  AND l.pid <> pg_catalog.pg_backend_pid()
ORDER BY 2
