DO $moat_probe$
-- moat's access probe. `moat.probe_input` holds the targets as JSON: for each, its schema and
-- its attempts (`sql`, and optionally `guard`, `ask` or `needs`), built and quoted by moat. Every
-- statement it runs touches no row and fires no trigger: EXPLAIN for SELECT, INSERT, UPDATE and
-- DELETE (the permission checks run, the executor does not); TRUNCATE, nextval and setval only
-- where the role's own privilege check (`guard`, the same check the server makes) says they
-- will be refused; REFERENCES and TRIGGER (which lock the table before their check) are asked
-- of the privilege functions (`ask`). `needs` skips an attempt unless an earlier one of the same
-- target succeeded. One code per attempt goes into `moat.probe_output`, one JSON string per
-- target (null: refused at its schema by an earlier target's attempt):
--   Y done, H held (not attempted), N refused, S refused at the schema, L lock timeout,
--   ? failed for another reason, - not attempted (needs), x not attempted after a lock timeout.
DECLARE
  target jsonb;
  attempt jsonb;
  results text[] := '{}';
  codes text;
  code text;
  stop text;
  held boolean;
  message text;
  denied_schema text;
BEGIN
  FOR target IN SELECT * FROM pg_catalog.jsonb_array_elements(pg_catalog.current_setting('moat.probe_input')::jsonb) LOOP
    -- A schema whose name lookup was refused refuses every statement on every object in it.
    IF target->>'schema' = denied_schema THEN
      results := pg_catalog.array_append(results, NULL::text);
      CONTINUE;
    END IF;
    codes := '';
    stop := NULL;
    FOR attempt IN SELECT * FROM pg_catalog.jsonb_array_elements(target->'attempts') LOOP
      IF stop IS NOT NULL THEN
        codes := codes || stop;
        CONTINUE;
      END IF;
      IF attempt->>'needs' IS NOT NULL
         AND pg_catalog.substr(codes, (attempt->>'needs')::int + 1, 1) NOT IN ('Y', 'H') THEN
        codes := codes || '-';
        CONTINUE;
      END IF;
      BEGIN
        held := false;
        IF attempt->>'guard' IS NOT NULL THEN
          EXECUTE attempt->>'guard' INTO held;
        END IF;
        IF held THEN
          code := 'H';
        ELSIF attempt->>'ask' IS NOT NULL THEN
          EXECUTE attempt->>'ask' INTO held;
          code := CASE WHEN held THEN 'H' ELSE 'N' END;
        ELSE
          EXECUTE attempt->>'sql';
          code := 'Y';
        END IF;
      EXCEPTION
        WHEN insufficient_privilege THEN
          GET STACKED DIAGNOSTICS message = MESSAGE_TEXT;
          IF message = pg_catalog.format('permission denied for schema %s', target->>'schema') THEN
            denied_schema := target->>'schema';
            code := 'S';
            stop := 'S';
          ELSE
            code := 'N';
          END IF;
        WHEN lock_not_available THEN
          code := 'L';
          stop := 'x';
        WHEN OTHERS THEN
          code := '?';
      END;
      codes := codes || code;
    END LOOP;
    results := pg_catalog.array_append(results, codes);
  END LOOP;
  PERFORM pg_catalog.set_config('moat.probe_output', pg_catalog.array_to_json(results)::text, true);
END
$moat_probe$
