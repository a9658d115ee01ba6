"""PostgreSQL, the shared storage backend (`[storage] backend = "postgresql"`): the schema and
its versioned migrations, and the leases that give each integration one owner at a time with a
fencing token every write checks. psycopg 3 is the driver; every call here blocks, so it runs in
actor threads or `asyncio.to_thread`, never on the event loop."""
