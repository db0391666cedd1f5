/*
 * main.c: the `limits` binary. No logic here: see cli.c.
 */
#include "lim/cli.h"

extern char **environ;

int main(int argc, char **argv)
{
    return lim_cli_main(argc, argv, environ);
}
