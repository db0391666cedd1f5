/*
 * workers.c: the supervising parent of `serve --workers N` (see workers.h).
 *
 * The parent runs no libuv loop: it blocks its signals and waits in poll(2) on a signalfd and on
 * one "ready" pipe per starting worker, with a timeout for the next scheduled restart or the
 * stop deadline. Everything it does is small and synchronous.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "lim/app.h"
#include "lim/log.h"
#include "lim/metrics.h"
#include "lim/workers.h"

#define BACKOFF_MIN_MS   100
#define BACKOFF_MAX_MS   30000
#define BACKOFF_RESET_MS 60000 /* a worker that lived this long starts from BACKOFF_MIN_MS */
#define KILL_GRACE_MS    5000  /* after SHUTDOWN_TIMEOUT, before SIGKILL */
#define BIND_RETRIES     10    /* x 100 ms: a previous instance's workers may still be exiting */

typedef struct worker_s {
    pid_t pid;           /* 0 while not running */
    int fd;              /* the parent's copy of the listening socket; -1 once closed */
    int ready_fd;        /* read end of the worker's ready pipe while starting; else -1 */
    int ready;           /* it reported listening */
    uint64_t started_ms; /* when it was forked */
    uint64_t restart_at; /* when to fork it again; 0: nothing scheduled */
    uint64_t backoff_ms; /* the next back-off */
    int status;          /* its last wait status */
} worker_t;

typedef struct sup_s {
    const lim_config_t *cfg;
    unsigned n;
    worker_t *w;
    lim_metrics_region_t *region;
    int sfd;           /* signalfd: SIGINT, SIGTERM, SIGCHLD */
    sigset_t old_mask; /* restored in the workers */
    pid_t self;
    int port;         /* the bound port */
    int announced;    /* every worker of the first generation is listening */
    int stopping;     /* a stop signal arrived, or start-up failed */
    uint64_t kill_at; /* SIGKILL deadline while stopping; 0 none */
    int exit_code;
} sup_t;

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

unsigned lim_workers_count(unsigned requested)
{
    long n;

    if (requested > 0)
        return requested > LIM_WORKERS_MAX ? LIM_WORKERS_MAX : requested;
    n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > LIM_WORKERS_MAX ? LIM_WORKERS_MAX : (unsigned) n;
}

/* ---- sockets ----------------------------------------------------------------------------------
 */

static int sock_open(const struct sockaddr_storage *ss, int reuseport, int *out)
{
    socklen_t len =
        ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int one = 1, fd, err;

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
        bind(fd, (const struct sockaddr *) ss, len) != 0) {
        err = -errno;
        close(fd);
        return err;
    }
    *out = fd;
    return 0;
}

/* Nothing else may listen on the address: SO_REUSEPORT would share it silently. A socket
 * without SO_REUSEPORT cannot bind where any socket listens. */
static int address_free(const struct sockaddr_storage *ss)
{
    int fd, rc = 0;

    for (int attempt = 0; attempt < BIND_RETRIES; attempt++) {
        rc = sock_open(ss, 0, &fd);
        if (rc == 0) {
            close(fd);
            return 0;
        }
        if (rc != UV_EADDRINUSE)
            return rc;
        usleep(100 * 1000);
    }
    return rc;
}

static void set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *) ss)->sin6_port = htons((uint16_t) port);
    else
        ((struct sockaddr_in *) ss)->sin_port = htons((uint16_t) port);
}

static int sa_port(const struct sockaddr_storage *ss)
{
    return ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *) ss)->sin6_port
                                           : ((const struct sockaddr_in *) ss)->sin_port);
}

static int get_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *) &ss, &len) != 0)
        return -1;
    return sa_port(&ss);
}

/* One listening SO_REUSEPORT socket per worker, all on the same port. */
static int sockets_open(sup_t *s)
{
    struct sockaddr_storage ss;
    int rc;

    memset(&ss, 0, sizeof(ss));
    rc = lim_server_parse_listen(s->cfg->listen, &ss);
    if (rc == 0 && sa_port(&ss) != 0)
        rc = address_free(&ss);
    for (unsigned i = 0; rc == 0 && i < s->n; i++) {
        rc = sock_open(&ss, 1, &s->w[i].fd);
        if (rc == 0 && listen(s->w[i].fd, 4096) != 0)
            rc = -errno;
        if (rc == 0 && i == 0) {
            /* Port 0: the first bind chose one; the others join it. */
            s->port = get_port(s->w[0].fd);
            set_port(&ss, s->port);
        }
    }
    if (rc != 0)
        lim_log_error("cannot listen on %s: %s", s->cfg->listen, uv_strerror(rc));
    return rc;
}

static void sockets_close(sup_t *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        if (s->w[i].fd >= 0)
            close(s->w[i].fd);
        s->w[i].fd = -1;
    }
}

/* ---- workers ----------------------------------------------------------------------------------
 */

/* In the child: become worker i and never return. */
static void worker_main(sup_t *s, unsigned i, int ready_wr)
{
    int rc;

    /* Die with the parent: a killed supervisor must not leave workers serving on. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != s->self)
        _exit(1);
    /* Out of the parent's process group: a Ctrl-C (or a kill of the group) reaches the parent
     * only, which passes it on once; a worker signalled twice would force its stop. */
    setpgid(0, 0);
    close(s->sfd);
    for (unsigned j = 0; j < s->n; j++) {
        if (j != i && s->w[j].fd >= 0)
            close(s->w[j].fd);
        if (s->w[j].ready_fd >= 0)
            close(s->w[j].ready_fd);
    }
    signal(SIGCHLD, SIG_DFL);
    /* SIGINT and SIGTERM stay blocked until the worker's loop handles them (app.c unblocks
     * them once started): one passed on by the parent this early is kept pending, not fatal. */
    {
        sigset_t mask = s->old_mask;
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigprocmask(SIG_SETMASK, &mask, NULL);
    }
    rc = lim_app_serve_worker(s->cfg, s->w[i].fd, s->region, i, ready_wr);
    /* exit(), not _exit(): the sanitizers' leak check runs at exit. stdio was flushed before
     * the fork, so nothing is written twice. */
    exit(rc);
}

static int worker_spawn(sup_t *s, unsigned i)
{
    worker_t *w = &s->w[i];
    int p[2];
    pid_t pid;

    if (pipe2(p, O_CLOEXEC) != 0) {
        lim_log_error("worker %u: pipe: %s", i, strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        lim_log_error("worker %u: fork: %s", i, strerror(errno));
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        close(p[0]);
        worker_main(s, i, p[1]);
    }
    close(p[1]);
    w->pid = pid;
    w->ready_fd = p[0];
    w->ready = 0;
    w->started_ms = now_ms();
    w->restart_at = 0;
    return 0;
}

static void describe(int status, char *out, size_t size)
{
    if (WIFEXITED(status))
        snprintf(out, size, "exit status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(out, size, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(out, size, "wait status %d", status);
}

static void signal_workers(sup_t *s, int signum)
{
    for (unsigned i = 0; i < s->n; i++)
        if (s->w[i].pid > 0)
            kill(s->w[i].pid, signum);
}

static void stop_all(sup_t *s, int signum, const char *why)
{
    if (s->stopping) {
        lim_log_warn("%s: passing it on to the workers (they force their stop)", why);
        signal_workers(s, signum);
        return;
    }
    s->stopping = 1;
    lim_log_info("%s: stopping %u workers gracefully", why, s->n);
    for (unsigned i = 0; i < s->n; i++)
        s->w[i].restart_at = 0;
    signal_workers(s, signum);
    /* Without the parent's copies a worker's socket closes with the worker: no connection is
     * queued where nobody will accept it. */
    sockets_close(s);
    s->kill_at = now_ms() + s->cfg->shutdown_timeout_ms + KILL_GRACE_MS;
}

static void worker_died(sup_t *s, unsigned i, int status)
{
    worker_t *w = &s->w[i];
    uint64_t now = now_ms(), lived = now - w->started_ms;
    char how[96];

    describe(status, how, sizeof(how));
    w->pid = 0;
    w->status = status;
    if (w->ready_fd >= 0) {
        close(w->ready_fd);
        w->ready_fd = -1;
    }
    if (s->stopping) {
        lim_log_kv(LIM_LOG_INFO, "worker stopped",
                   (lim_log_field_t[]){LIM_LOG_U("worker", i), LIM_LOG_S("how", how)}, 2);
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            s->exit_code = 1;
        return;
    }
    if (!s->announced) {
        /* The first generation could not start: a crash loop would only hide that. */
        lim_log_kv(LIM_LOG_ERROR, "worker failed to start; stopping",
                   (lim_log_field_t[]){LIM_LOG_U("worker", i), LIM_LOG_S("how", how)}, 2);
        s->exit_code = 1;
        stop_all(s, SIGTERM, "start-up failed");
        return;
    }
    if (lived >= BACKOFF_RESET_MS || w->backoff_ms == 0)
        w->backoff_ms = BACKOFF_MIN_MS;
    w->restart_at = now + w->backoff_ms;
    lim_log_kv(LIM_LOG_ERROR, "worker died; restarting",
               (lim_log_field_t[]){LIM_LOG_U("worker", i), LIM_LOG_S("how", how),
                                   LIM_LOG_U("lived_ms", lived),
                                   LIM_LOG_U("restart_in_ms", w->backoff_ms)},
               4);
    w->backoff_ms = w->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : w->backoff_ms * 2;
}

static void reap(sup_t *s)
{
    int status;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (unsigned i = 0; i < s->n; i++) {
            if (s->w[i].pid == pid) {
                worker_died(s, i, status);
                break;
            }
        }
    }
}

static unsigned live_workers(const sup_t *s)
{
    unsigned n = 0;

    for (unsigned i = 0; i < s->n; i++)
        n += s->w[i].pid > 0;
    return n;
}

static void on_signals(sup_t *s)
{
    struct signalfd_siginfo si;

    while (read(s->sfd, &si, sizeof(si)) == (ssize_t) sizeof(si)) {
        if (si.ssi_signo == SIGCHLD)
            reap(s);
        else
            stop_all(s, (int) si.ssi_signo,
                     si.ssi_signo == SIGINT ? "received SIGINT" : "received SIGTERM");
    }
}

static void on_ready(sup_t *s, unsigned i)
{
    worker_t *w = &s->w[i];
    char c;
    ssize_t n = read(w->ready_fd, &c, 1);

    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    close(w->ready_fd);
    w->ready_fd = -1;
    if (n == 1)
        w->ready = 1; /* else it died first: SIGCHLD tells */
}

static void announce_if_ready(sup_t *s)
{
    if (s->announced || s->stopping)
        return;
    for (unsigned i = 0; i < s->n; i++)
        if (!s->w[i].ready)
            return;
    s->announced = 1;
    lim_log_kv(LIM_LOG_INFO, "listening",
               (lim_log_field_t[]){LIM_LOG_S("listen", s->cfg->listen), LIM_LOG_I("port", s->port),
                                   LIM_LOG_U("pid", (uint64_t) s->self), LIM_LOG_U("workers", s->n),
                                   LIM_LOG_S("version", LIM_VERSION)},
               5);
}

static void restarts_due(sup_t *s)
{
    uint64_t now = now_ms();

    for (unsigned i = 0; i < s->n; i++) {
        worker_t *w = &s->w[i];
        if (w->pid != 0 || w->restart_at == 0 || w->restart_at > now)
            continue;
        lim_metrics_worker_restarted(s->region);
        if (worker_spawn(s, i) != 0)
            w->restart_at = now + BACKOFF_MAX_MS; /* fork failed: try again later */
    }
}

static int poll_timeout(const sup_t *s)
{
    uint64_t now = now_ms(), next = UINT64_MAX;

    for (unsigned i = 0; i < s->n; i++)
        if (s->w[i].pid == 0 && s->w[i].restart_at != 0 && s->w[i].restart_at < next)
            next = s->w[i].restart_at;
    if (s->kill_at != 0 && s->kill_at < next)
        next = s->kill_at;
    if (next == UINT64_MAX)
        return -1;
    return next <= now ? 0 : (int) (next - now > 60000 ? 60000 : next - now);
}

static void supervise(sup_t *s)
{
    struct pollfd pfd[LIM_WORKERS_MAX + 1];
    unsigned idx[LIM_WORKERS_MAX + 1];

    while (!(s->stopping && live_workers(s) == 0)) {
        nfds_t n = 0;

        pfd[n].fd = s->sfd;
        pfd[n].events = POLLIN;
        n++;
        for (unsigned i = 0; i < s->n; i++) {
            if (s->w[i].ready_fd >= 0) {
                pfd[n].fd = s->w[i].ready_fd;
                pfd[n].events = POLLIN;
                idx[n] = i;
                n++;
            }
        }
        if (poll(pfd, n, poll_timeout(s)) < 0 && errno != EINTR) {
            lim_log_error("poll: %s", strerror(errno));
            break;
        }
        for (nfds_t k = 1; k < n; k++)
            if (pfd[k].revents != 0 && s->w[idx[k]].ready_fd == pfd[k].fd)
                on_ready(s, idx[k]);
        if (pfd[0].revents != 0)
            on_signals(s);
        announce_if_ready(s);
        if (!s->stopping)
            restarts_due(s);
        if (s->stopping && s->kill_at != 0 && now_ms() >= s->kill_at && live_workers(s) > 0) {
            lim_log_error("workers still running %llu ms after the stop began: killing them",
                          (unsigned long long) (s->cfg->shutdown_timeout_ms + KILL_GRACE_MS));
            signal_workers(s, SIGKILL);
            s->exit_code = 1;
            s->kill_at = 0;
        }
    }
}

int lim_workers_serve(const lim_config_t *cfg, unsigned n)
{
    sup_t s;
    sigset_t mask;
    int rc;

    if (n < 2)
        return lim_app_serve(cfg);
    memset(&s, 0, sizeof(s));
    s.cfg = cfg;
    s.n = n;
    s.self = getpid();
    s.sfd = -1;
    s.w = calloc(n, sizeof(*s.w));
    if (s.w == NULL) {
        lim_log_error("out of memory");
        return 1;
    }
    for (unsigned i = 0; i < n; i++)
        s.w[i].fd = s.w[i].ready_fd = -1;
    /* Signals are read from a signalfd, so they must be blocked before a worker can die. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, &s.old_mask);
    s.sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    rc = s.sfd < 0 ? -errno : 0;
    if (rc != 0)
        lim_log_error("signalfd: %s", uv_strerror(rc));
    if (rc == 0)
        rc = lim_metrics_region_new(n, (uint64_t) time(NULL), &s.region);
    if (rc == 0)
        rc = sockets_open(&s);
    if (rc == 0) {
        lim_log_kv(
            LIM_LOG_INFO, "starting workers",
            (lim_log_field_t[]){LIM_LOG_U("workers", n), LIM_LOG_U("pid", (uint64_t) s.self)}, 2);
        for (unsigned i = 0; i < n && !s.stopping; i++) {
            if (worker_spawn(&s, i) != 0) {
                s.exit_code = 1;
                stop_all(&s, SIGTERM, "start-up failed");
            }
        }
        supervise(&s);
        if (s.exit_code == 0)
            lim_log_info("stopped");
    } else {
        s.exit_code = 1;
    }
    sockets_close(&s);
    for (unsigned i = 0; i < n; i++)
        if (s.w[i].ready_fd >= 0)
            close(s.w[i].ready_fd);
    if (s.sfd >= 0)
        close(s.sfd);
    sigprocmask(SIG_SETMASK, &s.old_mask, NULL);
    lim_metrics_region_free(s.region);
    free(s.w);
    return s.exit_code;
}
