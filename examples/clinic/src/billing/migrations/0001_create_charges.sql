-- One charge per prescription or lab result, created from their events.
CREATE TABLE charges (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    patient_id uuid NOT NULL,
    source text NOT NULL CHECK (source IN ('prescription', 'lab_result')),
    source_id uuid NOT NULL,
    description text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, source_id)
);

CREATE INDEX charges_patient ON charges (patient_id);
