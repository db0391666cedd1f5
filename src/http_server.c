/*
 * http_server.c: the listener, the connection set, max_connections and the graceful stop.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "http_int.h"
#include "lim/log.h"

static void accept_pending(lim_server_t *srv)
{
    int rc = lim__conn_start(srv);

    if (rc != 0)
        lim_log_warn("accept failed: %s", uv_strerror(rc));
}

static void on_connection(uv_stream_t *listener, int status)
{
    lim_server_t *srv = lim_container_of((uv_tcp_t *) listener, lim_server_t, listener);

    if (status < 0) {
        /* EMFILE and friends: libuv keeps the listener going; say so and carry on. */
        lim_log_warn("accept: %s", uv_strerror(status));
        return;
    }
    if (srv->open >= srv->cfg->max_connections) {
        /* Not accepting makes libuv stop polling the listener until uv_accept() is called,
         * so further clients wait in the kernel backlog instead of being refused. */
        if (!srv->accept_paused)
            lim_log_warn("max_connections (%u) reached: accepting paused",
                         (unsigned) srv->cfg->max_connections);
        srv->accept_paused = 1;
        return;
    }
    accept_pending(srv);
}

int lim_server_new(uv_loop_t *loop, const lim_config_t *cfg, const lim_router_t *router, void *app,
                   lim_server_t **out)
{
    lim_server_t *srv = calloc(1, sizeof(*srv));

    if (srv == NULL)
        return UV_ENOMEM;
    srv->loop = loop;
    srv->cfg = cfg;
    srv->router = router;
    srv->app = app;
    if (getrandom(&srv->rid_prefix, sizeof(srv->rid_prefix), GRND_NONBLOCK) !=
        (ssize_t) sizeof(srv->rid_prefix))
        srv->rid_prefix = uv_hrtime() ^ ((uint64_t) uv_os_getpid() << 32);
    *out = srv;
    return 0;
}

int lim_server_parse_listen(const char *listen, struct sockaddr_storage *ss)
{
    char host[64];
    const char *colon;
    size_t hlen;
    char *end;
    long port;

    if (listen[0] == '[') {
        const char *rb = strchr(listen, ']');
        if (rb == NULL || rb[1] != ':')
            return UV_EINVAL;
        hlen = (size_t) (rb - listen - 1);
        if (hlen >= sizeof(host))
            return UV_EINVAL;
        memcpy(host, listen + 1, hlen);
        host[hlen] = '\0';
        colon = rb + 1;
    } else {
        colon = strrchr(listen, ':');
        if (colon == NULL)
            return UV_EINVAL;
        hlen = (size_t) (colon - listen);
        if (hlen >= sizeof(host))
            return UV_EINVAL;
        memcpy(host, listen, hlen);
        host[hlen] = '\0';
    }
    port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port < 0 || port > 65535)
        return UV_EINVAL;
    if (listen[0] == '[')
        return uv_ip6_addr(host, (int) port, (struct sockaddr_in6 *) ss);
    return uv_ip4_addr(host, (int) port, (struct sockaddr_in *) ss);
}

int lim_server_listen(lim_server_t *srv, const char *listen)
{
    struct sockaddr_storage ss;
    int namelen = sizeof(ss);
    int rc;

    rc = lim_server_parse_listen(listen, &ss);
    if (rc != 0)
        return rc;
    rc = uv_tcp_init(srv->loop, &srv->listener);
    if (rc != 0)
        return rc;
    srv->listening = 1;
    rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *) &ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *) &srv->listener, 4096, on_connection);
    if (rc != 0)
        return rc; /* the caller stops the server, which closes the listener */
    rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *) &ss, &namelen);
    if (rc != 0)
        return rc;
    srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                               : ((struct sockaddr_in *) &ss)->sin_port);
    return 0;
}

int lim_server_open(lim_server_t *srv, int fd)
{
    struct sockaddr_storage ss;
    int namelen = sizeof(ss);
    int rc;

    rc = uv_tcp_init(srv->loop, &srv->listener);
    if (rc != 0)
        return rc;
    srv->listening = 1;
    rc = uv_tcp_open(&srv->listener, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *) &srv->listener, 4096, on_connection);
    if (rc == 0)
        rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *) &ss, &namelen);
    if (rc != 0)
        return rc; /* the caller stops the server, which closes the listener (and fd) */
    srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                               : ((struct sockaddr_in *) &ss)->sin_port);
    return 0;
}

int lim_server_port(const lim_server_t *srv)
{
    return srv->port;
}

static void maybe_stopped(lim_server_t *srv)
{
    lim_server_stopped_cb cb;

    if (!srv->draining || srv->open > 0 || (srv->listening && !srv->listener_closed))
        return;
    cb = srv->stopped_cb;
    srv->stopped_cb = NULL;
    if (cb != NULL)
        cb(srv, srv->stopped_arg);
}

void lim__server_conn_freed(lim_server_t *srv, lim_conn_t *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    srv->open--;
    if (srv->accept_paused && !srv->draining && srv->open < srv->cfg->max_connections) {
        srv->accept_paused = 0;
        accept_pending(srv);
    }
    maybe_stopped(srv);
}

static void on_listener_closed(uv_handle_t *h)
{
    lim_server_t *srv = lim_container_of((uv_tcp_t *) h, lim_server_t, listener);

    srv->listener_closed = 1;
    maybe_stopped(srv);
}

void lim_server_stop(lim_server_t *srv, lim_server_stopped_cb cb, void *arg)
{
    lim_conn_t *c, *next;

    if (srv->draining)
        return;
    srv->draining = 1;
    srv->stopped_cb = cb;
    srv->stopped_arg = arg;
    if (srv->listening)
        uv_close((uv_handle_t *) &srv->listener, on_listener_closed);
    for (c = srv->conns; c != NULL; c = next) {
        next = c->next;
        lim__conn_shutdown_idle(c);
    }
    /* With no listener and no connection there is no close callback to finish the stop. */
    if (!srv->listening && srv->open == 0 && cb != NULL) {
        srv->stopped_cb = NULL;
        cb(srv, arg);
    }
}

void lim_server_abort(lim_server_t *srv)
{
    lim_conn_t *c, *next;

    for (c = srv->conns; c != NULL; c = next) {
        next = c->next;
        lim__conn_abort(c);
    }
}

void lim_server_stats(const lim_server_t *srv, lim_server_stats_t *out)
{
    out->accepted = srv->accepted;
    out->requests = srv->requests;
    out->open = srv->open;
    out->accept_paused = (uint32_t) srv->accept_paused;
}

void lim_server_free(lim_server_t *srv)
{
    free(srv);
}
