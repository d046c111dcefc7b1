-- The policy looks up each row's own patient in the snapshot (one primary-key probe per row)
-- instead of collecting every patient of the ward first: reading one patient's results costs the
-- same however many patients the ward holds.
ALTER POLICY lab_results_by_ward ON lab_results
    USING ((SELECT s.ward_id FROM patient_snapshots s WHERE s.patient_id = lab_results.patient_id)
           = nullif(current_setting('clinic.ward_id', true), '')::uuid);
