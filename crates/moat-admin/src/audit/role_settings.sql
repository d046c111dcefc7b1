SELECT r.rolname::text AS role, d.datname::text AS database, u.setting
FROM pg_db_role_setting s
JOIN pg_roles r ON r.oid = s.setrole
LEFT JOIN pg_database d ON d.oid = s.setdatabase
CROSS JOIN LATERAL unnest(s.setconfig) AS u(setting)
WHERE (s.setdatabase = 0 OR d.datname = current_database())
  AND starts_with(r.rolname, $1)
ORDER BY 1, 2 NULLS FIRST, 3
