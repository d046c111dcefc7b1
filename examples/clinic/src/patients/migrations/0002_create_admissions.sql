CREATE TABLE admissions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    patient_id uuid NOT NULL REFERENCES patients (id),
    ward_id uuid NOT NULL,
    admitted_at timestamptz NOT NULL DEFAULT now(),
    discharged_at timestamptz
);

CREATE INDEX admissions_patient ON admissions (patient_id);
