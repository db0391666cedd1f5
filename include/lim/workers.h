/*
 * workers.h: `limits serve --workers N`: one small supervising parent and N worker processes,
 * each running one loop (app.h) on the same address.
 *
 * Sockets. The parent binds N listening sockets to LISTEN with SO_REUSEPORT (the kernel spreads
 * new connections over them) and gives worker i socket i. The parent keeps its copy of every
 * socket open while it runs, so the connections queued on a worker's socket survive that
 * worker's death and are served by its replacement. Port 0 is resolved by the first bind and
 * the others bind to the same port. Before that, the parent makes sure nothing else listens on
 * the address (a bind without SO_REUSEPORT), because SO_REUSEPORT would otherwise let a second
 * `limits serve` of the same user share a busy port silently.
 *
 * Supervision. A worker that exits or is killed while the service runs is restarted on the same
 * socket and the same metrics slot, after a back-off that doubles from 100 ms to 30 s and is
 * reset once a worker has lived 60 s; each death and restart is logged. If a worker of the first
 * generation fails before it is listening (e.g. the loop cannot start), the service stops and
 * `serve` fails: a configuration that cannot start must not crash-loop.
 *
 * Signals. SIGTERM or SIGINT to the parent is passed to every worker (each drains gracefully,
 * app.h); the parent then closes its copies of the sockets, so no new connection is queued, and
 * exits once every worker has exited: 0 if every worker exited 0, else 1. A second signal is
 * passed on too (the workers force their stop). If the workers are still there
 * SHUTDOWN_TIMEOUT + 5 s after the first signal, the parent kills them (SIGKILL) and exits 1.
 * Workers die with the parent (PR_SET_PDEATHSIG): `kill -9` of the parent ends the service.
 *
 * Metrics. The parent maps the metrics region (metrics.h) before forking, so every worker's
 * numbers are visible to every scrape.
 */
#ifndef LIM_WORKERS_H
#define LIM_WORKERS_H

#include "lim/config.h"

#define LIM_WORKERS_MAX 256

/** The number of workers `serve` runs: `requested`, or the online CPUs when 0 (at least 1). */
unsigned lim_workers_count(unsigned requested);

/**
 * Run the service with `n` worker processes (n >= 2; n == 1 is lim_app_serve()) until it is
 * stopped. Returns the exit status of `limits serve`.
 */
int lim_workers_serve(const lim_config_t *cfg, unsigned n);

#endif
