SELECT n.nspname::text AS schema, p.proname::text AS name, p.oid::regprocedure::text AS signature, l.lanname::text AS language,
       p.prosrc AS body, pg_get_functiondef(p.oid) AS definition
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = ANY($1) AND l.lanname IN ('plpgsql', 'sql') AND p.prokind IN ('f', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
