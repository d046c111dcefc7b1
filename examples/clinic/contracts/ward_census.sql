-- Patients and prescriptions per ward, for reporting. The one allowed cross-module read: owned by
-- no module, read by the `reporting` consumer.
CREATE VIEW ward_census AS
SELECT p.ward_id,
       count(DISTINCT p.id) AS patients,
       count(rx.id) AS prescriptions
FROM patients.patients p
LEFT JOIN prescriptions.prescriptions rx ON rx.patient_id = p.id
GROUP BY p.ward_id;

COMMENT ON VIEW ward_census IS 'Patients and prescriptions per ward.';
