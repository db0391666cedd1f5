/*
 * redis.h: the Redis driver: one hiredis async connection on the libuv loop, with a connect
 * timeout, per-command deadlines, reconnection with backoff, and scripts run by EVALSHA.
 *
 * It knows nothing of limits. Debian 12 ships hiredis 0.14, which has no connect or command
 * timeouts in its async API and whose libuv adapter predates the fix that maps poll errors to
 * events, so this module brings its own adapter (uv_poll + the hiredis ev hooks) and its own
 * timers (c-style-anchors.md §D(b), h2o's redis client as the model):
 *   - connect: a uv_timer bounds it (connect_timeout_ms); failure or timeout schedules a
 *     reconnect with exponential backoff (100 ms doubling to 5 s);
 *   - commands: replies come in order, so the in-flight commands form a FIFO and one timer
 *     watches the oldest deadline (command_timeout_ms); when it passes, the connection is torn
 *     down, which fails every in-flight command, and a reconnect is scheduled;
 *   - a dropped connection fails every in-flight command (never lost, never hung).
 * While not connected, commands fail at once with UV_ECONNREFUSED: callers decide what a
 * missing Redis means (the limits module falls back to PostgreSQL alone). Only during the very
 * first connection attempt are commands queued (bounded by their deadline), so a server that
 * is just starting does not refuse its first requests. "Connected" means Redis has answered
 * (a SELECT db or PING is sent first), so a peer that accepts but never answers is caught by
 * the connect deadline.
 *
 * Commands that would break "one reply per command, in order" or change the connection's
 * state behind the driver's back are refused with UV_EINVAL: the (P)SUBSCRIBE family,
 * MONITOR, CLIENT REPLY, HELLO, SELECT, RESET. A NOSCRIPT retry gets a fresh deadline, so an
 * eval may take up to twice command_timeout_ms. hiredis 0.14 writes with write(2): the driver
 * sets SIGPIPE to ignored if it is still at its default (a process-wide effect).
 *
 * REDIS_URL is redis://HOST[:PORT][/DB] (port 6379, db 0 by default) with HOST an IP literal
 * (hiredis resolves names with a blocking getaddrinfo, which must not run on the loop), or
 * unix:///path/to/socket[?db=N].
 *
 * Async contract (c-style-anchors.md §C.3 rule 4): a non-zero return means the callback never
 * runs; zero means it runs exactly once, never before the call returns. The reply is valid
 * only during the callback. Single loop thread only.
 */
#ifndef LIM_REDIS_H
#define LIM_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "lim/common.h"

typedef struct lim_redis_s lim_redis_t;

typedef struct lim_redis_opts_s {
    const char *url;             /* REDIS_URL; copied */
    uint64_t connect_timeout_ms; /* default (and when 0) 2000 */
    uint64_t command_timeout_ms; /* default (and when 0) 1000 */
} lim_redis_opts_t;

/**
 * A command's outcome. status 0: `reply` is Redis's answer (which may be an error reply,
 * REDIS_REPLY_ERROR: the caller looks). Otherwise reply is NULL and status is UV_ETIMEDOUT
 * (deadline passed; the connection was reset), UV_ECONNRESET (the connection broke with the
 * command in flight: it may or may not have run), or UV_ECANCELED (the client is closing).
 */
typedef void (*lim_redis_cb)(int status, const redisReply *reply, void *arg);
typedef void (*lim_redis_closed_cb)(void *arg);

/* A Lua script, loaded on first use and run by EVALSHA (SCRIPT LOAD again after NOSCRIPT,
 * e.g. when Redis restarted). Define one per script as a static; the driver fills `sha`. */
typedef struct lim_redis_script_s {
    const char *source;
    char sha[41]; /* SHA-1 hex of source, computed at first use */
} lim_redis_script_t;

typedef struct lim_redis_stats_s {
    int up;               /* connected now */
    uint64_t commands;    /* completed (any status) */
    uint64_t errors;      /* completed with status != 0 */
    uint64_t timeouts;    /* deadlines passed */
    uint64_t rejected;    /* refused at once while disconnected */
    uint64_t reconnects;  /* connections made after the first */
    uint64_t disconnects; /* connections lost or torn down */
} lim_redis_stats_t;

/** Defaults into opts (url NULL). */
void lim_redis_opts_defaults(lim_redis_opts_t *opts);

/**
 * Create the client and start connecting in the background.
 * @return 0 and *out, UV_EINVAL (bad URL or a host name), UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_redis_new(uv_loop_t *loop, const lim_redis_opts_t *opts, lim_redis_t **out);

/**
 * Send a command given as binary-safe arguments (never formatted from user data).
 * @return 0; UV_ECONNREFUSED (not connected now); UV_ECANCELED (closing); UV_ENOMEM;
 *         UV_EINVAL (argc < 1).
 */
LIM_MUSTCHECK int lim_redis_command(lim_redis_t *r, int argc, const char *const *argv,
                                    const size_t *argvlen, lim_redis_cb cb, void *arg);

/**
 * Run a script: EVALSHA sha nkeys keys... args...; on a NOSCRIPT error the script is loaded
 * (SCRIPT LOAD) and EVALSHA retried once, invisibly to the caller. Returns as
 * lim_redis_command().
 */
LIM_MUSTCHECK int lim_redis_eval(lim_redis_t *r, lim_redis_script_t *script, int nkeys,
                                 const char *const *keys, int nargs, const char *const *args,
                                 lim_redis_cb cb, void *arg);

/** Whether the connection is up now. */
int lim_redis_up(const lim_redis_t *r);

void lim_redis_stats(const lim_redis_t *r, lim_redis_stats_t *out);

/** Fail everything in flight with UV_ECANCELED (from the loop), disconnect, close handles;
 *  cb runs when the memory is gone. */
void lim_redis_close(lim_redis_t *r, lim_redis_closed_cb cb, void *arg);

#endif
