-- While a renumbered folder is scanned again with initial_sync = "new": the UIDNEXT
-- at the change (NULL when no rescan is on). Below it, mail dated before the first
-- contact stays skipped; it is kept with the cursor, so a restart mid-rescan knows.
ALTER TABLE imap_cursors ADD COLUMN rescan_below_uid INTEGER;
