-- Rows, not tables, are the boundary here: a session sees the lab results of the patients in the
-- ward it names (`SET LOCAL clinic.ward_id = '<uuid>'`) and nothing else. The runtime role does not
-- own the table, so the policy applies to it.
ALTER TABLE lab_results ENABLE ROW LEVEL SECURITY;

CREATE POLICY lab_results_by_ward ON lab_results
    FOR SELECT
    USING (EXISTS (
        SELECT 1 FROM patient_snapshots s
        WHERE s.patient_id = lab_results.patient_id
          AND s.ward_id = nullif(current_setting('clinic.ward_id', true), '')::uuid
    ));

CREATE POLICY lab_results_insert ON lab_results FOR INSERT WITH CHECK (true);
