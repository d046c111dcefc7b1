WITH managed AS (SELECT oid, nspname FROM pg_namespace WHERE nspname = ANY($1)),
refs AS (
  SELECT d.classid, d.objid, d.objsubid, d.refclassid, d.refobjid,
         coalesce(c.relnamespace, p.pronamespace, t.typnamespace) AS refns,
         CASE d.classid
           WHEN 'pg_class'::regclass THEN d.objid
           WHEN 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = d.objid)
           WHEN 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = d.objid)
           WHEN 'pg_policy'::regclass THEN (SELECT polrelid FROM pg_policy WHERE oid = d.objid)
           WHEN 'pg_attrdef'::regclass THEN (SELECT adrelid FROM pg_attrdef WHERE oid = d.objid)
           WHEN 'pg_constraint'::regclass THEN (SELECT conrelid FROM pg_constraint WHERE oid = d.objid)
         END AS onrel,
         CASE d.classid
           WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_proc WHERE oid = d.objid)
           WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_type WHERE oid = d.objid)
           WHEN 'pg_constraint'::regclass THEN (SELECT connamespace FROM pg_constraint WHERE oid = d.objid)
         END AS ownns
  FROM pg_depend d
  LEFT JOIN pg_class c ON d.refclassid = 'pg_class'::regclass AND c.oid = d.refobjid
  LEFT JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
  LEFT JOIN pg_type t ON d.refclassid = 'pg_type'::regclass AND t.oid = d.refobjid
  WHERE d.deptype IN ('n', 'a') AND d.refobjid >= 16384
),
located AS (
  SELECT refs.*, m.nspname AS ref_schema,
         coalesce((SELECT relnamespace FROM pg_class WHERE oid = refs.onrel AND refs.onrel <> 0), refs.ownns) AS depns
  FROM refs JOIN managed m ON m.oid = refs.refns
),
-- Only dependencies that cross schemas are described (pg_identify_object is not cheap).
crossing AS MATERIALIZED (
  SELECT l.* FROM located l JOIN pg_namespace dn ON dn.oid = l.depns
  WHERE dn.nspname <> l.ref_schema AND dn.nspname = ANY($1)
)
SELECT coalesce(json_agg(DISTINCT jsonb_build_object(
    'kind', CASE WHEN a.type = 'rule' THEN (SELECT CASE relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END FROM pg_class WHERE oid = l.onrel) ELSE a.type END,
    'schema', dn.nspname,
    'identity', CASE WHEN a.type = 'rule' THEN l.onrel::regclass::text ELSE a.identity END,
    'ref_kind', b.type, 'ref_schema', l.ref_schema, 'ref_identity', b.identity,
    'foreign_key', CASE WHEN l.classid = 'pg_constraint'::regclass
                        THEN (SELECT conname FROM pg_constraint WHERE oid = l.objid AND contype = 'f') END,
    'ref_relation', CASE WHEN l.refclassid = 'pg_class'::regclass
                         THEN (SELECT relname FROM pg_class WHERE oid = l.refobjid) END
  )), '[]')::text
FROM crossing l
JOIN pg_namespace dn ON dn.oid = l.depns
CROSS JOIN LATERAL pg_identify_object(l.classid, l.objid, 0) a
CROSS JOIN LATERAL pg_identify_object(l.refclassid, l.refobjid, 0) b
