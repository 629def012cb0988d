-- Who holds a pending outbox row for an attempt now (NULL: nobody). Its lease
-- ends at due_at; an outbox that starts alone on the database knows each holder
-- died mid-attempt and makes those rows due at once instead of after the lease.
ALTER TABLE outbox ADD COLUMN leased_by TEXT;
