-- What prescriptions shows of a patient, kept current by the patients module's PatientUpdated events.
CREATE TABLE patient_snapshots (
    patient_id uuid PRIMARY KEY,
    mrn text NOT NULL,
    first_name text NOT NULL,
    last_name text NOT NULL,
    version bigint NOT NULL
);
