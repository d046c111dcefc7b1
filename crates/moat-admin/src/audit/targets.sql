SELECT n.nspname::text AS schema, c.relname::text AS name, c.oid::bigint AS oid, c.relkind::text AS kind,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS columns,
       -- The table a sequence belongs to (serial, identity, OWNED BY): a claim follows the table.
       (SELECT t.relname::text FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid
        WHERE c.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.objid = c.oid
          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1) AS table_name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
ORDER BY 1, 2
