-- $1: the schemas read (module schemas, contracts and the schemas that claims name); $2: the
-- claimed schemas, where two objects of one schema can belong to two modules. Each side is
-- described with the name that decides its module: a relation's (an index, an owned sequence,
-- a trigger, rule, policy, default or constraint counts as its table), a routine's or a type's
-- (an array type as its element, a row type as its relation).
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
         coalesce((SELECT relnamespace FROM pg_class WHERE oid = refs.onrel AND refs.onrel <> 0), refs.ownns) AS depns,
         -- The relation an index or an owned sequence belongs to, on both sides.
         (SELECT coalesce(
            (SELECT indrelid FROM pg_index WHERE indexrelid = refs.onrel),
            (SELECT od.refobjid FROM pg_depend od JOIN pg_class s ON s.oid = od.objid AND s.relkind = 'S'
             WHERE od.classid = 'pg_class'::regclass AND od.objid = refs.onrel
               AND od.refclassid = 'pg_class'::regclass AND od.deptype IN ('a', 'i') LIMIT 1),
            refs.onrel) WHERE refs.onrel <> 0) AS deprel,
         CASE WHEN refs.refclassid = 'pg_class'::regclass THEN coalesce(
            (SELECT indrelid FROM pg_index WHERE indexrelid = refs.refobjid),
            (SELECT od.refobjid FROM pg_depend od JOIN pg_class s ON s.oid = od.objid AND s.relkind = 'S'
             WHERE od.classid = 'pg_class'::regclass AND od.objid = refs.refobjid
               AND od.refclassid = 'pg_class'::regclass AND od.deptype IN ('a', 'i') LIMIT 1),
            refs.refobjid) END AS refrel
  FROM refs JOIN managed m ON m.oid = refs.refns
),
-- Only dependencies that cross schemas, or that join two relations of a claimed schema, are
-- described (pg_identify_object is not cheap).
crossing AS MATERIALIZED (
  SELECT l.* FROM located l JOIN pg_namespace dn ON dn.oid = l.depns
  WHERE dn.nspname = ANY($1)
    AND (dn.nspname <> l.ref_schema
         OR (l.ref_schema = ANY($2) AND l.deprel IS DISTINCT FROM l.refrel
             AND NOT (l.classid = 'pg_proc'::regclass AND l.refclassid = 'pg_proc'::regclass AND l.objid = l.refobjid)))
)
SELECT coalesce(json_agg(DISTINCT jsonb_build_object(
    'kind', CASE WHEN a.type = 'rule' THEN (SELECT CASE relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END FROM pg_class WHERE oid = l.onrel) ELSE a.type END,
    'schema', dn.nspname,
    'name', coalesce(
        (SELECT relname FROM pg_class WHERE oid = l.deprel),
        CASE l.classid
          WHEN 'pg_proc'::regclass THEN (SELECT proname FROM pg_proc WHERE oid = l.objid)
          WHEN 'pg_type'::regclass THEN (SELECT typname FROM pg_type WHERE oid = l.objid)
          WHEN 'pg_constraint'::regclass
            THEN (SELECT ty.typname FROM pg_constraint co JOIN pg_type ty ON ty.oid = co.contypid WHERE co.oid = l.objid)
        END, ''),
    'identity', CASE WHEN a.type = 'rule'
      THEN (SELECT format('%I.%I', vn.nspname, v.relname) FROM pg_class v JOIN pg_namespace vn ON vn.oid = v.relnamespace WHERE v.oid = l.onrel)
      ELSE a.identity END,
    'ref_kind', b.type, 'ref_schema', l.ref_schema, 'ref_identity', b.identity,
    'ref_name', coalesce(
        (SELECT relname FROM pg_class WHERE oid = l.refrel),
        CASE l.refclassid
          WHEN 'pg_proc'::regclass THEN (SELECT proname FROM pg_proc WHERE oid = l.refobjid)
          WHEN 'pg_type'::regclass THEN (
            SELECT coalesce(r.relname, e.typname, ty.typname) FROM pg_type ty
            LEFT JOIN pg_type e ON ty.typcategory = 'A' AND e.oid = ty.typelem
            LEFT JOIN pg_class r ON r.oid = coalesce(nullif(e.typrelid, 0), nullif(ty.typrelid, 0))
            WHERE ty.oid = l.refobjid)
        END, ''),
    'foreign_key', CASE WHEN l.classid = 'pg_constraint'::regclass
                        THEN (SELECT conname FROM pg_constraint WHERE oid = l.objid AND contype = 'f') END,
    'ref_relation', CASE WHEN l.refclassid = 'pg_class'::regclass
                         THEN (SELECT relname FROM pg_class WHERE oid = l.refobjid) END
  )), '[]')::text
FROM crossing l
JOIN pg_namespace dn ON dn.oid = l.depns
CROSS JOIN LATERAL pg_identify_object(l.classid, l.objid, 0) a
CROSS JOIN LATERAL pg_identify_object(l.refclassid, l.refobjid, 0) b
