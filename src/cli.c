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

static const command_t commands[] = {
    {"serve", "run the HTTP API server in the foreground",
     "Usage: limits serve\n"
     "\n"
     "Serves the API on LISTEN (default 127.0.0.1:5000) until SIGINT or SIGTERM, then stops\n"
     "gracefully: no new connections, requests in flight finish, idle connections close.\n"
     "A second signal, or SHUTDOWN_TIMEOUT (default 30s), forces the stop (exit status 1).\n"
     "Settings come from the environment and the file named by LIMITS_SETTINGS (see README).\n",
     cmd_serve},
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
