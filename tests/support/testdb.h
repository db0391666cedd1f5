/*
 * testdb.h: a fresh PostgreSQL database per test, on the server named by
 * LIM_TEST_DATABASE_URL (exported by scripts/test.sh). A test without it fails, saying so:
 * integration tests never skip silently.
 */
#ifndef LIM_TESTDB_H
#define LIM_TESTDB_H

#include <libpq-fe.h>

/** Create an empty database; returns its conninfo (malloc'd). Fails the test on error. */
char *testdb_create(void);

/** Create one and apply the schema (lim_store_initdb). */
char *testdb_create_migrated(void);

/** Drop it (terminating its sessions) and free the conninfo. */
void testdb_drop(char *conninfo);

/** Run SQL on it with a blocking connection; fails the test on error. Returns the result
 *  (PQclear it) so tests can read rows. */
PGresult *testdb_exec(const char *conninfo, const char *sql);

#endif
