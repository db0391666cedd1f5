/*
 * cli.c: argument parsing and command dispatch for the `limits` binary.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lim/app.h"
#include "lim/cli.h"
#include "lim/config.h"
#include "lim/log.h"
#include "lim/store.h"
#include "lim/workers.h"
#include <uv.h>

typedef struct command_s {
    const char *name;
    const char *summary;
    const char *usage; /* shown by `limits COMMAND --help` */
    int (*run)(const lim_config_t *cfg, int argc, char **argv);
} command_t;

/* `serve [--workers N]`: *workers is N, or -1 when not given. @return 0, or -1 (said why). */
static int serve_args(int argc, char **argv, long *workers)
{
    *workers = -1;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        char *end;

        if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc)
            v = argv[++i];
        else if (strncmp(argv[i], "--workers=", 10) == 0)
            v = argv[i] + 10;
        if (v == NULL) {
            fprintf(stderr, "limits serve: unexpected argument \"%s\"\n", argv[i]);
            return -1;
        }
        errno = 0;
        *workers = strtol(v, &end, 10);
        if (*v == '\0' || *end != '\0' || errno != 0 || *workers < 1 ||
            *workers > LIM_WORKERS_MAX) {
            fprintf(stderr, "limits serve: --workers: expected a number from 1 to %d, got \"%s\"\n",
                    LIM_WORKERS_MAX, v);
            return -1;
        }
    }
    return 0;
}

static int cmd_serve(const lim_config_t *cfg, int argc, char **argv)
{
    long n;

    if (serve_args(argc, argv, &n) != 0)
        return 2;
    n = lim_workers_count(n > 0 ? (unsigned) n : cfg->workers);
    return n == 1 ? lim_app_serve(cfg) : lim_workers_serve(cfg, (unsigned) n);
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

/* ---- administration: users, cards, keys ------------------------------------------------- */

/* What an administration subcommand was given. */
typedef struct admin_args_s {
    const char *what;  /* "limits cards add", for messages */
    const char *arg;   /* the positional argument, or NULL */
    const char *user;  /* --user */
    const char *email; /* --email */
    const char *name;  /* --name */
    int all;           /* --all */
    int json;          /* --json */
} admin_args_t;

/* Which arguments a subcommand takes. */
enum {
    TAKES_ARG = 1u << 0,
    TAKES_USER = 1u << 1,
    TAKES_EMAIL = 1u << 2,
    TAKES_NAME = 1u << 3,
    TAKES_ALL = 1u << 4,
    TAKES_JSON = 1u << 5,
};

/* A subcommand's run returns an exit status; 2 (bad usage) has been explained on stderr, and
 * the group's usage follows. */
typedef struct subcommand_s {
    const char *name;
    unsigned takes;
    int (*run)(const lim_config_t *cfg, const admin_args_t *a);
} subcommand_t;

static int usage_error(const admin_args_t *a, const char *fmt, ...) LIM_PRINTF(2, 3);

/* Print "limits GROUP SUB: <message>". @return 2 (bad usage). */
static int usage_error(const admin_args_t *a, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", a->what);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 2;
}

/* Where option `s` goes in a, if the subcommand takes it: a value (*value) or a switch
 * (*on). @return 0 when it is not one of its options. */
static int find_option(const char *s, unsigned takes, admin_args_t *a, const char ***value,
                       int **on)
{
    *value = NULL;
    *on = NULL;
    if (strcmp(s, "--user") == 0 && (takes & TAKES_USER))
        *value = &a->user;
    else if (strcmp(s, "--email") == 0 && (takes & TAKES_EMAIL))
        *value = &a->email;
    else if (strcmp(s, "--name") == 0 && (takes & TAKES_NAME))
        *value = &a->name;
    else if (strcmp(s, "--all") == 0 && (takes & TAKES_ALL))
        *on = &a->all;
    else if (strcmp(s, "--json") == 0 && (takes & TAKES_JSON))
        *on = &a->json;
    return *value != NULL || *on != NULL;
}

/* Parse argv (after the subcommand) into a. @return 0, or 2 (explained). */
static int parse_admin(unsigned takes, int argc, char **argv, admin_args_t *a)
{
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        const char **value;
        int *on;

        if (find_option(s, takes, a, &value, &on)) {
            if (on != NULL) {
                *on = 1;
                continue;
            }
            if (*value != NULL)
                return usage_error(a, "%s given twice", s);
            /* "--user --json" is a forgotten value, not a user called "--json". */
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)
                return usage_error(a, "%s needs a value", s);
            *value = argv[++i];
        } else if (s[0] == '-' && s[1] != '\0') {
            return usage_error(a, "unexpected option \"%s\"", s);
        } else if ((takes & TAKES_ARG) && a->arg == NULL) {
            a->arg = s;
        } else {
            return usage_error(a, "unexpected argument \"%s\"", s);
        }
    }
    return 0;
}

/* Whether `s` is `min`..`max` bytes without control characters, and (unless `spaces`) without
 * spaces. Bytes from 0x80 (UTF-8) are allowed. */
static int text_ok(const char *s, size_t min, size_t max, int spaces)
{
    size_t len = strlen(s);

    if (len < min || len > max)
        return 0;
    for (const unsigned char *c = (const unsigned char *) s; *c != '\0'; c++)
        if (*c < 0x20 || *c == 0x7f || (*c == ' ' && !spaces))
            return 0;
    return 1;
}

static int all_digits(const char *s)
{
    return s[0] != '\0' && strspn(s, "0123456789") == strlen(s);
}

/* --user is required, and names a user by username or id. */
static int check_user(const admin_args_t *a)
{
    if (a->user == NULL)
        return usage_error(a, "%s is required", "--user USER");
    if (!text_ok(a->user, 1, 255, 0))
        return usage_error(a, "--user: \"%s\" is not a username or user id", a->user);
    return 0;
}

static int exit_status(int rc)
{
    return rc == 0 ? 0 : 1;
}

static int run_users_add(const lim_config_t *cfg, const admin_args_t *a)
{
    const char *at;

    if (a->arg == NULL)
        return usage_error(a, "%s is required", "USERNAME");
    if (a->email == NULL)
        return usage_error(a, "%s is required", "--email EMAIL");
    /* Commands take a user by username or by id; all digits means an id. */
    if (!text_ok(a->arg, 1, 255, 0) || all_digits(a->arg))
        return usage_error(a,
                           "bad username \"%s\": 1 to 255 bytes, no spaces or control "
                           "characters, not all digits",
                           a->arg);
    at = strchr(a->email, '@');
    if (!text_ok(a->email, 3, 320, 0) || at == NULL || at == a->email || at[1] == '\0')
        return usage_error(a, "bad email \"%s\": expected NAME@DOMAIN, at most 320 bytes",
                           a->email);
    return exit_status(lim_store_user_add(cfg->database_url, a->arg, a->email, stdout, stderr));
}

static int run_cards_add(const lim_config_t *cfg, const admin_args_t *a)
{
    int rc = check_user(a);

    if (rc != 0)
        return rc;
    if (a->name != NULL &&
        (!text_ok(a->name, 1, 127, 1) || a->name[0] == ' ' || a->name[strlen(a->name) - 1] == ' '))
        return usage_error(a,
                           "bad card name \"%s\": 1 to 127 bytes, no control characters or "
                           "leading or trailing spaces",
                           a->name);
    return exit_status(lim_store_card_add(cfg->database_url, a->user, a->name, stdout, stderr));
}

static int run_cards_list(const lim_config_t *cfg, const admin_args_t *a)
{
    int rc = check_user(a);

    if (rc != 0)
        return rc;
    return exit_status(lim_store_cards_print(cfg->database_url, a->user, a->json, stdout, stderr));
}

static int run_keys_add(const lim_config_t *cfg, const admin_args_t *a)
{
    int rc = check_user(a);

    if (rc != 0)
        return rc;
    return exit_status(lim_store_key_add(cfg->database_url, a->user, stdout, stderr));
}

static int run_keys_list(const lim_config_t *cfg, const admin_args_t *a)
{
    int rc = check_user(a);

    if (rc != 0)
        return rc;
    return exit_status(lim_store_keys_print(cfg->database_url, a->user, a->json, stdout, stderr));
}

static int run_keys_revoke(const lim_config_t *cfg, const admin_args_t *a)
{
    if (a->all && a->arg != NULL)
        return usage_error(a, "give a key's PREFIX or %s, not both", "--all");
    if (!a->all && a->arg == NULL)
        return usage_error(a, "give a key's PREFIX, or %s", "--all --user USER");
    if ((a->all || a->user != NULL) && check_user(a) != 0)
        return 2;
    if (a->arg != NULL && !text_ok(a->arg, 1, 255, 0))
        return usage_error(a, "bad key prefix \"%s\"", a->arg);
    return exit_status(lim_store_keys_revoke(cfg->database_url, a->arg, a->user, stdout, stderr));
}

static const subcommand_t users_subcommands[] = {
    {"add", TAKES_ARG | TAKES_EMAIL, run_users_add},
};

static const subcommand_t cards_subcommands[] = {
    {"add", TAKES_USER | TAKES_NAME, run_cards_add},
    {"list", TAKES_USER | TAKES_JSON, run_cards_list},
};

static const subcommand_t keys_subcommands[] = {
    {"add", TAKES_USER, run_keys_add},
    {"list", TAKES_USER | TAKES_JSON, run_keys_list},
    {"revoke", TAKES_ARG | TAKES_USER | TAKES_ALL, run_keys_revoke},
};

static const char users_usage[] =
    "Usage: limits users add USERNAME --email EMAIL\n"
    "\n"
    "Creates a user (with its Braintree customer id; it gets cards and API keys with\n"
    "`limits cards add` and `limits keys add`). USERNAME is 1 to 255 bytes, without spaces,\n"
    "and not all digits: other commands take a user by username or by id. Usernames and\n"
    "emails are unique; a taken one is an error (exit status 1).\n";

static const char cards_usage[] =
    "Usage: limits cards add --user USER [--name NAME]\n"
    "       limits cards list --user USER [--json]\n"
    "\n"
    "USER is a username or a user id.\n"
    "  add   gives the user a new card with balance 0.00, named NAME (1 to 127 bytes, unique\n"
    "        among the user's cards), or Card-<n> with the lowest n not in use.\n"
    "  list  prints the user's cards by id: a table ID NAME BALANCE (\"12.50\"), or with\n"
    "        --json an array of {\"id\", \"name\", \"balance\"} as GET /cards/ has them.\n"
    "No such user, or a card name the user already has, is an error (exit status 1).\n";

static const char keys_usage[] =
    "Usage: limits keys add --user USER\n"
    "       limits keys list --user USER [--json]\n"
    "       limits keys revoke PREFIX [--user USER]\n"
    "       limits keys revoke --all --user USER\n"
    "\n"
    "USER is a username or a user id.\n"
    "  add     makes a new API key for the user and prints it once, with its prefix. Only\n"
    "          its SHA-256 is stored: it cannot be shown again.\n"
    "  list    prints the user's keys, oldest first: PREFIX CREATED REVOKED (UTC; \"-\" when\n"
    "          live), or with --json an array. Never the keys themselves.\n"
    "  revoke  revokes the key with that prefix (a whole key works too, matched by its hash;\n"
    "          --user restricts the match to that user's keys), or with --all every live key\n"
    "          of the user. Revoking a revoked key changes nothing and says so (exit status\n"
    "          0). Running servers refuse a revoked key's loads at once, and its other\n"
    "          requests within AUTH_CACHE_TTL.\n"
    "No such user or key, or a prefix several keys share, is an error (exit status 1).\n";

/* argv: GROUP SUBCOMMAND ARGS... */
static int run_group(const lim_config_t *cfg, const char *group, const char *usage_text,
                     const subcommand_t *subs, size_t n, int argc, char **argv)
{
    char what[64];
    admin_args_t a;
    int rc;

    if (argc < 2) {
        fprintf(stderr, "limits %s: which one?\n\n%s", group, usage_text);
        return 2;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(argv[1], subs[i].name) != 0)
            continue;
        memset(&a, 0, sizeof(a));
        snprintf(what, sizeof(what), "limits %s %s", group, subs[i].name);
        a.what = what;
        rc = parse_admin(subs[i].takes, argc - 2, argv + 2, &a);
        if (rc == 0)
            rc = subs[i].run(cfg, &a);
        if (rc == 2)
            fprintf(stderr, "\n%s", usage_text);
        return rc;
    }
    fprintf(stderr, "limits %s: unknown subcommand \"%s\"\n\n%s", group, argv[1], usage_text);
    return 2;
}

static int cmd_users(const lim_config_t *cfg, int argc, char **argv)
{
    return run_group(cfg, "users", users_usage, users_subcommands,
                     LIM_ARRAY_SIZE(users_subcommands), argc, argv);
}

static int cmd_cards(const lim_config_t *cfg, int argc, char **argv)
{
    return run_group(cfg, "cards", cards_usage, cards_subcommands,
                     LIM_ARRAY_SIZE(cards_subcommands), argc, argv);
}

static int cmd_keys(const lim_config_t *cfg, int argc, char **argv)
{
    return run_group(cfg, "keys", keys_usage, keys_subcommands, LIM_ARRAY_SIZE(keys_subcommands),
                     argc, argv);
}

static const command_t commands[] = {
    {"serve", "run the HTTP API server in the foreground",
     "Usage: limits serve [--workers N]\n"
     "\n"
     "Serves the API on LISTEN (default 127.0.0.1:5000) until SIGINT or SIGTERM, then stops\n"
     "gracefully: no new connections, requests in flight finish, idle connections close.\n"
     "A second signal, or SHUTDOWN_TIMEOUT (default 30s), forces the stop (exit status 1).\n"
     "\n"
     "  --workers N  run N worker processes, one loop each, sharing LISTEN (SO_REUSEPORT),\n"
     "               under a parent that restarts a worker that dies and passes SIGINT and\n"
     "               SIGTERM on to all of them. Default: WORKERS, whose default 0 means one\n"
     "               per online CPU. --workers 1 serves in this single process.\n"
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
    {"users", "create users (users add)", users_usage, cmd_users},
    {"cards", "add and list a user's cards (cards add, cards list)", cards_usage, cmd_cards},
    {"keys", "make, list and revoke a user's API keys (keys add, keys list, keys revoke)",
     keys_usage, cmd_keys},
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
    if (strcmp(cmd->name, "serve") == 0) {
        long n;
        if (serve_args(argc - 1, argv + 1, &n) != 0) {
            fprintf(stderr, "\n%s", cmd->usage);
            return 2;
        }
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
