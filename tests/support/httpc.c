/*
 * httpc.c: see httpc.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "httpc.h"
#include "uvtest.h"

static void on_poll(uv_poll_t *p, int status, int events)
{
    httpc_t *c = p->data;

    (void) events;
    for (;;) {
        if (c->cap - c->len < 4097) {
            size_t cap = c->cap ? c->cap * 2 : 8192;
            char *n = realloc(c->in, cap);
            if (n == NULL)
                abort();
            c->in = n;
            c->cap = cap;
        }
        ssize_t r = recv(c->fd, c->in + c->len, c->cap - c->len - 1, 0);
        if (r > 0) {
            c->len += (size_t) r;
            c->in[c->len] = '\0';
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && status >= 0)
            return;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            c->err = errno;
        c->eof = 1;
        uv_poll_stop(p);
        return;
    }
}

httpc_t *httpc_connect(uv_loop_t *loop, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t) port)};
    httpc_t *c = calloc(1, sizeof(*c));
    int one = 1;

    if (c == NULL)
        return NULL;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
        if (c->fd >= 0)
            close(c->fd);
        free(c);
        return NULL;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->in = calloc(1, 1);
    c->cap = 1;
    uv_poll_init_socket(loop, &c->poll, c->fd);
    c->poll.data = c;
    uv_poll_start(&c->poll, UV_READABLE | UV_DISCONNECT, on_poll);
    return c;
}

int httpc_send(httpc_t *c, uv_loop_t *loop, const void *data, size_t len)
{
    const char *p = data;
    uint64_t deadline = uv_hrtime() + UINT64_C(10000000000);

    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t) n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        if (uv_hrtime() > deadline)
            return -1;
        uv_run(loop, UV_RUN_NOWAIT);
    }
    return 0;
}

typedef struct want_s {
    httpc_t *c;
    size_t n;
    const char *needle;
} want_t;

static int have_bytes(void *arg)
{
    want_t *w = arg;
    return w->c->eof || w->c->len >= w->n;
}

static int have_eof(void *arg)
{
    want_t *w = arg;
    return w->c->eof;
}

static int have_needle(void *arg)
{
    want_t *w = arg;
    return w->c->eof || memmem(w->c->in, w->c->len, w->needle, strlen(w->needle)) != NULL;
}

size_t httpc_wait_bytes(httpc_t *c, uv_loop_t *loop, size_t n, uint64_t ms)
{
    want_t w = {.c = c, .n = n};
    uvtest_run_until(loop, have_bytes, &w, ms);
    return c->len;
}

int httpc_wait_eof(httpc_t *c, uv_loop_t *loop, uint64_t ms)
{
    want_t w = {.c = c};
    return uvtest_run_until(loop, have_eof, &w, ms);
}

int httpc_wait_for(httpc_t *c, uv_loop_t *loop, const char *needle, uint64_t ms)
{
    want_t w = {.c = c, .needle = needle};
    uvtest_run_until(loop, have_needle, &w, ms);
    return memmem(c->in, c->len, needle, strlen(needle)) != NULL;
}

void httpc_clear(httpc_t *c)
{
    c->len = 0;
    c->in[0] = '\0';
}

void httpc_shutdown(httpc_t *c)
{
    shutdown(c->fd, SHUT_WR);
}

static void on_closed(uv_handle_t *h)
{
    httpc_t *c = h->data;
    close(c->fd);
    free(c->in);
    free(c);
}

void httpc_close(httpc_t *c)
{
    uv_close((uv_handle_t *) &c->poll, on_closed);
}

char *httpc_normalize(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    size_t o = 0;

    if (out == NULL)
        abort();
    for (size_t i = 0; i < len;) {
        int at_line_start = i == 0 || s[i - 1] == '\n';
        const char *names[] = {"Date: ", "X-Request-Id: "};
        int done = 0;
        for (size_t k = 0; at_line_start && k < 2 && !done; k++) {
            size_t nl = strlen(names[k]);
            if (len - i >= nl && memcmp(s + i, names[k], nl) == 0) {
                memcpy(out + o, names[k], nl);
                o += nl;
                out[o++] = '*';
                i += nl;
                while (i < len && s[i] != '\r')
                    i++;
                done = 1;
            }
        }
        if (!done)
            out[o++] = s[i++];
    }
    out[o] = '\0';
    return out;
}

unsigned httpc_count_responses(const char *s, size_t len, int head_request)
{
    unsigned count = 0;
    size_t i = 0;

    while (i < len) {
        const char *end = memmem(s + i, len - i, "\r\n\r\n", 4);
        if (end == NULL)
            break;
        size_t head_len = (size_t) (end - (s + i)) + 4;
        int status = atoi(s + i + 9);
        size_t body = 0;
        const char *cl = memmem(s + i, head_len, "Content-Length: ", 16);
        if (cl != NULL && !head_request && status != 304 && status >= 200)
            body = (size_t) strtoul(cl + 16, NULL, 10);
        if (i + head_len + body > len)
            break;
        i += head_len + body;
        if (status >= 200)
            count++;
    }
    return count;
}
