"""The store: PostgreSQL (through the one asyncio bridge for asyncpg,
store/database.py), a domain object per group of tables, the in-memory
stand-in for tests and the simulation, and the Redis link (the other
bridge). Nothing outside this package knows asyncio exists."""
