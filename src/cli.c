/*
 * cli.c: argument parsing and command dispatch for the `limits` binary.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lim/app.h"
#include "lim/cli.h"
#include "lim/config.h"
#include "lim/log.h"
#include "lim/store.h"
#include <uv.h>

typedef struct command_s {
    const char *name;
    const char *summary;
    const char *usage; /* shown by `limits COMMAND --help` */
    int (*run)(const lim_config_t *cfg, int argc, char **argv);
} command_t;

static int cmd_serve(const lim_config_t *cfg, int argc, char **argv)
{
    (void) argc;
    (void) argv;
    return lim_app_serve(cfg);
}

static int cmd_initdb(const lim_config_t *cfg, int argc, char **argv)
{
    (void) argv;
    if (argc > 1) {
        fprintf(stderr, "limits initdb: takes no arguments\n");
        return 2;
    }
    return lim_store_initdb(cfg->database_url, stdout, stderr) == 0 ? 0 : 1;
}

static int parse_count(const char *opt, const char *v, unsigned max, unsigned *out)
{
    char *end;
    unsigned long n;

    if (v == NULL) {
        fprintf(stderr, "limits fake-data: %s needs a value\n", opt);
        return -1;
    }
    n = strtoul(v, &end, 10);
    if (*v == '\0' || *end != '\0' || v[0] == '-' || n > max) {
        fprintf(stderr, "limits fake-data: %s: expected a number from 0 to %u, got \"%s\"\n", opt,
                max, v);
        return -1;
    }
    *out = (unsigned) n;
    return 0;
}

static int cmd_fake_data(const lim_config_t *cfg, int argc, char **argv)
{
    unsigned users = 0, cards = 1;
    const char *keys = NULL;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--users") == 0) {
            if (parse_count("--users", argv[i + 1], 100000, &users) != 0)
                return 2;
            i++;
        } else if (strcmp(argv[i], "--cards-per-user") == 0) {
            if (parse_count("--cards-per-user", argv[i + 1], 100, &cards) != 0)
                return 2;
            i++;
        } else if (strcmp(argv[i], "--keys-file") == 0 && i + 1 < argc) {
            keys = argv[++i];
        } else {
            fprintf(stderr, "limits fake-data: unexpected argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    if (users > 0 && keys == NULL) {
        fprintf(stderr, "limits fake-data: --users needs --keys-file to print the keys to\n");
        return 2;
    }
    return lim_store_fake_data(cfg->database_url, users, cards, keys, stdout, stderr) == 0 ? 0 : 1;
}

static int cmd_reconcile(const lim_config_t *cfg, int argc, char **argv)
{
    int keep_going = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--loop") == 0) {
            keep_going = 1;
        } else {
            fprintf(stderr, "limits reconcile: unexpected argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    return lim_app_reconcile(cfg, keep_going);
}

static const command_t commands[] = {
    {"serve", "run the HTTP API server in the foreground",
     "Usage: limits serve\n"
     "\n"
     "Serves the API on LISTEN (default 127.0.0.1:5000) until SIGINT or SIGTERM, then stops\n"
     "gracefully: no new connections, requests in flight finish, idle connections close.\n"
     "A second signal, or SHUTDOWN_TIMEOUT (default 30s), forces the stop (exit status 1).\n"
     "Settings come from the environment and the file named by LIMITS_SETTINGS (see README).\n",
     cmd_serve},
    {"initdb", "create or migrate the database schema (idempotent)",
     "Usage: limits initdb\n"
     "\n"
     "Applies the schema migrations this build knows to DATABASE_URL, printing each one, or\n"
     "that the schema is up to date. Safe to run again, and from several hosts at once.\n",
     cmd_initdb},
    {"fake-data", "create the user guest with card Card-1 and an API key (idempotent)",
     "Usage: limits fake-data [--users N --keys-file PATH] [--cards-per-user M]\n"
     "\n"
     "Creates user guest (guest@example.com) with card Card-1 (balance 0) and prints a new API\n"
     "key for it once. A second run creates nothing that exists and says so.\n"
     "With --users N it also creates user1..userN, each with M cards (default 1) named\n"
     "Card-1..Card-M and an API key, and writes one line \"user_id card_id key\" per card to\n"
     "PATH (for tests and benchmarks).\n",
     cmd_fake_data},
    {"reconcile", "settle loads whose outcome at Braintree is not known",
     "Usage: limits reconcile [--loop]\n"
     "\n"
     "Looks up, by order id at Braintree, every load left pending or unknown for longer than\n"
     "RECONCILE_GRACE, and completes it: credited exactly once when charged, failed when not.\n"
     "Prints what it did and exits (1 if anything failed). With --loop it goes on every\n"
     "RECONCILE_INTERVAL until SIGINT or SIGTERM. Several may run at once, also alongside\n"
     "servers (which reconcile too): each load is worked on by one of them at a time.\n",
     cmd_reconcile},
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: limits [--help | --version] COMMAND [--help]\n\nCommands:\n");
    for (size_t i = 0; i < LIM_ARRAY_SIZE(commands); i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nSettings: environment variables and the file named by LIMITS_SETTINGS.\n");
}

int lim_cli_main(int argc, char **argv, char **envp)
{
    const command_t *cmd = NULL;
    lim_config_t cfg;
    char *err = NULL;
    int rc;

    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("limits %s\n", LIM_VERSION);
        return 0;
    }
    for (size_t i = 0; i < LIM_ARRAY_SIZE(commands); i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            cmd = &commands[i];
    if (cmd == NULL) {
        fprintf(stderr, "limits: unknown command \"%s\"\n\n", argv[1]);
        usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(cmd->usage, stdout);
            return 0;
        }
    }
    if (strcmp(cmd->name, "serve") == 0 && argc > 2) {
        fprintf(stderr, "limits serve: unexpected argument \"%s\"\n\n%s", argv[2], cmd->usage);
        return 2;
    }

    rc = lim_config_load(&cfg, envp, &err);
    if (rc != 0) {
        fprintf(stderr, "limits: configuration error: %s\n", err != NULL ? err : uv_strerror(rc));
        free(err);
        lim_config_free(&cfg);
        return 2;
    }
    lim_log_setup(cfg.log_format, cfg.log_level);
    rc = cmd->run(&cfg, argc - 1, argv + 1);
    lim_config_free(&cfg);
    return rc;
}
