"""The chaos harness: a private PostgreSQL, a fault-injecting TCP proxy, worker processes killed,
frozen and cut off on a schedule, and a checker that proves nothing was lost or recorded twice."""
