"""Every PostgreSQL advisory lock key the service takes, in one place, so no two jobs share one.

Keys are per database. A session lock held by one connection blocks every other connection, the
same process's included: the scheduler's leadership lock (held for as long as it leads) and the
daily prune that the leader starts must therefore never use the same key, or the prune would find
its own leader "busy" and never run.
"""

MIGRATION = 727274   # `db init` / `db upgrade`: one schema change at a time (transaction lock)
SCHEDULER = 727275   # the leading scheduler (session lock, held while it leads)
RETENTION = 727276   # a prune run, the scheduler's or a manual `dunning data prune` (session lock)
