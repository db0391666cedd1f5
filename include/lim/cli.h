/*
 * cli.h: the `limits` command line: `limits [--help | --version] COMMAND [OPTIONS]`.
 * Commands: serve (later issues add initdb, fake-data, reconcile, ...). Each has --help.
 * Exit statuses: 0 success, 1 failure while running, 2 bad usage or bad configuration.
 */
#ifndef LIM_CLI_H
#define LIM_CLI_H

/** Run the command line; returns the process exit status. envp is `environ`. */
int lim_cli_main(int argc, char **argv, char **envp);

#endif
