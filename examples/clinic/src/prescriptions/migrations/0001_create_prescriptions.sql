-- patient_id is the patients module's id, stored as a plain value: no foreign key across modules.
CREATE TABLE prescriptions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    patient_id uuid NOT NULL,
    medication text NOT NULL,
    dose_amount numeric NOT NULL CHECK (dose_amount > 0),
    issued_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX prescriptions_patient ON prescriptions (patient_id);
