-- Monthly partitions of audit_logs from 2025-01 through 2035-12, and a default partition for any other
-- timestamp, so that an insert never fails for want of a partition.

DO $$
DECLARE
    month_start DATE := DATE '2025-01-01';
BEGIN
    WHILE month_start < DATE '2036-01-01' LOOP
        EXECUTE format(
            'CREATE TABLE audit_logs_%s PARTITION OF audit_logs FOR VALUES FROM (%L) TO (%L)',
            to_char(month_start, 'YYYY_MM'), month_start, (month_start + INTERVAL '1 month')::date
        );
        month_start := (month_start + INTERVAL '1 month')::date;
    END LOOP;
END
$$;

CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT;
