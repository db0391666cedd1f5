/*
 * migrations.h: the database schema as an ordered list of versioned migrations.
 *
 * Each migration is SQL text that lim_store_initdb() runs in one transaction of its own and
 * records in schema_migrations(version, name, applied_at). Versions are 1, 2, 3, ... with no
 * gaps; the last one equals LIM_SCHEMA_VERSION (store.h). A migration, once released, never
 * changes: a schema change is a new migration at the end.
 *
 * The data is static and read-only: safe from any thread.
 */
#ifndef LIM_MIGRATIONS_H
#define LIM_MIGRATIONS_H

#include <stddef.h>

typedef struct lim_migration_s {
    int version;      /* 1, 2, ...: the order they run in */
    const char *name; /* a few words for schema_migrations and the initdb output */
    const char *sql;  /* one or more statements, run as one simple query */
} lim_migration_t;

/** Every migration in version order; *n receives how many. */
const lim_migration_t *lim_migrations(size_t *n);

#endif
