CREATE TABLE patients (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    mrn text NOT NULL UNIQUE,
    first_name text NOT NULL,
    last_name text NOT NULL,
    ward_id uuid,
    -- Incremented on every change; events carry it so that snapshots apply only newer ones.
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
