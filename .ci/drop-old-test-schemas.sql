-- Schemas of earlier test and bench runs (`t_<uuidv7>`, `bench_<uuidv7>`) more than an hour old:
-- the UUIDv7's first 48 bits are its creation time in Unix milliseconds. One transaction per
-- schema: dropping hundreds in one ran out of lock slots (max_locks_per_transaction).
DO $$
DECLARE s text;
BEGIN
  FOR s IN
    SELECT nspname FROM pg_namespace
    WHERE nspname ~ '^(t|bench)_[0-9a-f]{32}$'
      AND ('x' || substr(nspname, strpos(nspname, '_') + 1, 12))::bit(48)::bigint
          < (extract(epoch FROM now()) * 1000)::bigint - 3600 * 1000
  LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
    COMMIT;
  END LOOP;
END $$;
