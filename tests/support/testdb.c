/*
 * testdb.c: see testdb.h.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lim/store.h"
#include "testdb.h"

static const char *base_url(void)
{
    const char *url = getenv("LIM_TEST_DATABASE_URL");
    cr_assert(url != NULL && url[0] != '\0',
              "LIM_TEST_DATABASE_URL is not set: run the suite through scripts/test.sh, which "
              "starts the test PostgreSQL and exports it");
    return url;
}

static char *with_dbname(const char *url, const char *dbname)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &err);
    char *out = malloc(1024);
    size_t n = 0;

    cr_assert_not_null(opts, "bad LIM_TEST_DATABASE_URL: %s", err != NULL ? err : "?");
    cr_assert_not_null(out);
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL || o->val[0] == '\0' || strcmp(o->keyword, "dbname") == 0)
            continue;
        n += (size_t) snprintf(out + n, 1024 - n, "%s='%s' ", o->keyword, o->val);
    }
    snprintf(out + n, 1024 - n, "dbname='%s'", dbname);
    PQconninfoFree(opts);
    return out;
}

PGresult *testdb_exec(const char *conninfo, const char *sql)
{
    PGconn *c = PQconnectdb(conninfo);
    PGresult *r;

    cr_assert_eq(PQstatus(c), CONNECTION_OK, "connect: %s", PQerrorMessage(c));
    r = PQexec(c, sql);
    cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
              "%s: %s", sql, PQerrorMessage(c));
    PQfinish(c);
    return r;
}

char *testdb_create(void)
{
    static unsigned counter;
    char name[64], sql[128];
    const char *url = base_url();

    snprintf(name, sizeof(name), "limits_t_%ld_%u", (long) getpid(), counter++);
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", name);
    PQclear(testdb_exec(url, sql));
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
    PQclear(testdb_exec(url, sql));
    return with_dbname(url, name);
}

char *testdb_create_migrated(void)
{
    char *url = testdb_create();
    FILE *devnull = fopen("/dev/null", "w");

    cr_assert_eq(lim_store_initdb(url, devnull, stderr), 0, "initdb failed");
    fclose(devnull);
    return url;
}

void testdb_drop(char *conninfo)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    char sql[160];

    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "dbname") == 0 && o->val != NULL) {
            snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", o->val);
            PQclear(testdb_exec(base_url(), sql));
        }
    }
    PQconninfoFree(opts);
    free(conninfo);
}
