CREATE TABLE lab_results (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    patient_id uuid NOT NULL,
    test text NOT NULL,
    value numeric NOT NULL,
    unit text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX lab_results_patient ON lab_results (patient_id);

-- The ward of each patient, fed by PatientUpdated events; the row-level policy reads it.
CREATE TABLE patient_snapshots (
    patient_id uuid PRIMARY KEY,
    ward_id uuid,
    version bigint NOT NULL
);
