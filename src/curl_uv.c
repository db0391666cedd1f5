/*
 * curl_uv.c: libcurl's multi interface on the libuv loop (see curl_uv.h).
 *
 * The glue follows c-style-anchors.md §D(a), with its corrections: every curl_multi_socket_action
 * is followed by draining curl_multi_info_read (unconditionally); the timer callback handles
 * -1 (delete) and never calls back into curl; a poll error is reported as CURL_CSELECT_ERR;
 * CURL_POLL_REMOVE closes our poll before curl may close the socket; the glue outlives
 * curl_multi_cleanup (which may call the socket callback). Easy handles are kept on a free
 * list and reset for reuse, so a request costs no curl_easy_init; request records are kept
 * too, with their response buffer (small ones only), so a request's answer is not grown by
 * reallocation again each time.
 *
 * System calls: libcurl 7.88 drops the socket of a connection that goes back to its cache
 * (CURL_POLL_REMOVE) and announces it again for the next transfer; each time the poll is
 * closed (epoll DEL) and a new one made (uv_poll_init probes with ADD and DEL, then ADD). Keeping
 * the poll of a removed socket is not safe: libcurl may close the socket afterwards without
 * telling us (7.88 skips CURLOPT_CLOSESOCKETFUNCTION on some paths), and a libuv handle on a
 * file descriptor number that was reused elsewhere would break that other user's polling.
 * What is avoided is re-arming a poll for the events it already waits for.
 */
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

#include "lim/buf.h"
#include "lim/curl_uv.h"
#include "lim/log.h"

#define FREE_EASY_MAX  256
#define FREE_REQ_MAX   64          /* request records kept for reuse */
#define KEEP_RESP_SIZE (32 * 1024) /* response buffers up to this size are kept with them */

typedef struct creq_s creq_t;

struct lim_curl_s {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer; /* the one timer CURLMOPT_TIMERFUNCTION manages */
    uv_timer_t defer; /* runs the close from the loop */
    creq_t *reqs;     /* in flight */
    CURL *free_easy[FREE_EASY_MAX];
    unsigned n_free;
    creq_t *free_reqs; /* finished request records, linked by next */
    unsigned n_free_reqs;
    int closing;
    unsigned closes_pending;
    lim_curl_closed_cb closed_cb;
    void *closed_arg;
    lim_curl_stats_t st;
};

typedef struct csock_s {
    uv_poll_t poll;
    curl_socket_t fd;
    int events; /* what the poll waits for */
    lim_curl_t *cu;
} csock_t;

struct creq_s {
    lim_curl_t *cu;
    creq_t *prev, *next;
    CURL *easy;
    struct curl_slist *hdrs;
    lim_buf_t resp;
    size_t body_len;
    int too_big;
    int no_resend; /* not GET: libcurl must never send it a second time */
    int attempts;  /* times libcurl was about to send it */
    lim_curl_cb cb;
    void *arg;
    uint64_t start_ns;
    char errbuf[CURL_ERROR_SIZE];
};

static void on_csock_closed(uv_handle_t *h)
{
    free(lim_container_of((uv_poll_t *) h, csock_t, poll));
}

static void drain_done(lim_curl_t *cu);

static void on_curl_poll(uv_poll_t *h, int status, int events)
{
    csock_t *cs = lim_container_of(h, csock_t, poll);
    lim_curl_t *cu = cs->cu;
    int flags = 0, running;

    if (status < 0)
        flags |= CURL_CSELECT_ERR; /* libuv passes events == 0 on error */
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(cu->multi, cs->fd, flags, &running);
    drain_done(cu);
}

static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    lim_curl_t *cu = userp;
    csock_t *cs = socketp;
    int events = 0;

    (void) easy; /* may be an internal handle we never added (CURLMOPT_SOCKETFUNCTION docs) */
    if (what == CURL_POLL_REMOVE) {
        if (cs != NULL) {
            /* uv_close stops polling at once, so curl may close the socket right after. */
            uv_close((uv_handle_t *) &cs->poll, on_csock_closed);
            curl_multi_assign(cu->multi, s, NULL);
        }
        return 0;
    }
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    if (cs == NULL) {
        cs = malloc(sizeof(*cs));
        if (cs == NULL)
            return -1;
        if (uv_poll_init_socket(cu->loop, &cs->poll, s) != 0) {
            free(cs);
            return -1;
        }
        cs->fd = s;
        cs->events = 0;
        cs->cu = cu;
        curl_multi_assign(cu->multi, s, cs);
    } else if (events == cs->events && uv_is_active((uv_handle_t *) &cs->poll)) {
        /* uv_poll_start always stops first (epoll DEL, then ADD): skip a no-op re-arm. A poll
         * libuv stopped on an error is not active and is started again. */
        return 0;
    }
    cs->events = events;
    return uv_poll_start(&cs->poll, events, on_curl_poll) == 0 ? 0 : -1;
}

static void on_curl_timeout(uv_timer_t *t)
{
    lim_curl_t *cu = lim_container_of(t, lim_curl_t, timer);
    int running;

    curl_multi_socket_action(cu->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain_done(cu);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    lim_curl_t *cu = userp;

    (void) multi;
    if (timeout_ms < 0) {
        uv_timer_stop(&cu->timer);
        return 0;
    }
    /* Even 0 goes through the loop: curl must not be called from its own callback. */
    uv_timer_start(&cu->timer, on_curl_timeout, (uint64_t) timeout_ms, 0);
    return 0;
}

static size_t on_curl_write(char *data, size_t size, size_t nmemb, void *userp)
{
    creq_t *r = userp;
    size_t n = size * nmemb;

    if (lim_buf_append(&r->resp, data, n) != 0) {
        r->too_big = 1;
        return 0; /* makes curl stop with CURLE_WRITE_ERROR */
    }
    return n;
}

/* Called before each attempt to send, including libcurl's silent resend of a request that got
 * no answer on a reused connection. A POST/PUT may have been acted on: never resend it. */
static int on_curl_prereq(void *userp, char *ip, char *local_ip, int port, int local_port)
{
    creq_t *r = userp;

    (void) ip;
    (void) local_ip;
    (void) port;
    (void) local_port;
    return ++r->attempts > 1 && r->no_resend ? CURL_PREREQFUNC_ABORT : CURL_PREREQFUNC_OK;
}

static int status_of(creq_t *r, CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_ABORTED_BY_CALLBACK:
        return r->attempts > 1 ? UV_ECONNRESET : UV_EPROTO; /* a refused resend */
    case CURLE_OPERATION_TIMEDOUT:
        return UV_ETIMEDOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return UV_ECONNREFUSED;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return UV_ECONNRESET;
    case CURLE_WRITE_ERROR:
        return r->too_big ? UV_E2BIG : UV_EPROTO;
    case CURLE_OUT_OF_MEMORY:
        return UV_ENOMEM;
    default:
        return UV_EPROTO;
    }
}

static void req_unlink(lim_curl_t *cu, creq_t *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        cu->reqs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

/* A request record for the next request: a reused one keeps its response buffer's storage. */
static creq_t *req_get(lim_curl_t *cu)
{
    creq_t *r = cu->free_reqs;
    lim_buf_t resp;

    if (r == NULL)
        return calloc(1, sizeof(*r));
    cu->free_reqs = r->next;
    cu->n_free_reqs--;
    resp = r->resp;
    memset(r, 0, sizeof(*r));
    r->resp = resp;
    return r;
}

static void req_put(lim_curl_t *cu, creq_t *r)
{
    if (cu->n_free_reqs < FREE_REQ_MAX && !cu->closing) {
        if (r->resp.cap > KEEP_RESP_SIZE)
            lim_buf_free(&r->resp);
        else
            lim_buf_reset(&r->resp);
        r->next = cu->free_reqs;
        cu->free_reqs = r;
        cu->n_free_reqs++;
        return;
    }
    lim_buf_free(&r->resp);
    free(r);
}

static void easy_release(lim_curl_t *cu, CURL *easy)
{
    if (cu->n_free < FREE_EASY_MAX && !cu->closing) {
        curl_easy_reset(easy); /* keeps its connection-independent caches, clears options */
        cu->free_easy[cu->n_free++] = easy;
        return;
    }
    curl_easy_cleanup(easy);
}

/* Hand a finished request to its owner; `rc` is curl's verdict, or -1 for "cancelled". */
static void req_finish(lim_curl_t *cu, creq_t *r, CURLcode rc, int cancelled)
{
    lim_curl_result_t res;
    curl_off_t uploaded = 0;
    long request_size = 0, http_code = 0, connects = 0;

    curl_easy_getinfo(r->easy, CURLINFO_SIZE_UPLOAD_T, &uploaded);
    curl_easy_getinfo(r->easy, CURLINFO_REQUEST_SIZE, &request_size);
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &http_code);
    curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &connects);
    curl_multi_remove_handle(cu->multi, r->easy);
    req_unlink(cu, r);
    cu->st.in_flight--;
    cu->st.requests++;
    cu->st.connects += (uint64_t) connects;

    memset(&res, 0, sizeof(res));
    res.status = cancelled ? UV_ECANCELED : status_of(r, rc);
    /* Sent = the request line and headers went out, and every body byte after them. */
    res.sent = (request_size > 0 && (uint64_t) uploaded >= r->body_len) || r->attempts > 1;
    res.http_code = res.status == 0 ? http_code : 0;
    res.body = r->resp.data != NULL ? r->resp.data : "";
    res.body_len = r->resp.len;
    res.errmsg = res.status == 0 ? ""
                 : cancelled     ? "the HTTP client is closing"
                 : r->errbuf[0]  ? r->errbuf
                                 : curl_easy_strerror(rc);
    res.elapsed_us = (uv_hrtime() - r->start_ns) / 1000;
    if (res.status != 0)
        cu->st.failures++;
    r->cb(&res, r->arg);

    easy_release(cu, r->easy);
    curl_slist_free_all(r->hdrs);
    req_put(cu, r);
}

static void drain_done(lim_curl_t *cu)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(cu->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        /* Copy out: msg is invalid once the handle is removed. */
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;
        creq_t *r = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &r);
        if (r == NULL)
            continue;
        req_finish(cu, r, rc, 0);
    }
}

int lim_curl_new(uv_loop_t *loop, lim_curl_t **out)
{
    static int global_done;
    const curl_version_info_data *vi;
    lim_curl_t *cu;

    if (!global_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
            return UV_ENOMEM;
        global_done = 1;
    }
    vi = curl_version_info(CURLVERSION_NOW);
    if (!(vi->features & CURL_VERSION_ASYNCHDNS)) {
        lim_log_error("libcurl has no asynchronous resolver: it would block the loop");
        return UV_ENOTSUP;
    }
    cu = calloc(1, sizeof(*cu));
    if (cu == NULL)
        return UV_ENOMEM;
    cu->multi = curl_multi_init();
    if (cu->multi == NULL) {
        free(cu);
        return UV_ENOMEM;
    }
    cu->loop = loop;
    uv_timer_init(loop, &cu->timer);
    uv_timer_init(loop, &cu->defer);
    curl_multi_setopt(cu->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(cu->multi, CURLMOPT_SOCKETDATA, cu);
    curl_multi_setopt(cu->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(cu->multi, CURLMOPT_TIMERDATA, cu);
    /* Keep enough idle connections for a full burst to the gateway to be reused. */
    curl_multi_setopt(cu->multi, CURLMOPT_MAXCONNECTS, 2048L);
    *out = cu;
    return 0;
}

int lim_curl_request(lim_curl_t *cu, const lim_curl_req_t *req, lim_curl_cb cb, void *arg)
{
    creq_t *r;
    CURL *e;

    if (cu->closing)
        return UV_ECANCELED;
    if (req->url == NULL || req->method == NULL || cb == NULL)
        return UV_EINVAL;
    r = req_get(cu);
    if (r == NULL)
        return UV_ENOMEM;
    e = cu->n_free > 0 ? cu->free_easy[--cu->n_free] : curl_easy_init();
    if (e == NULL) {
        req_put(cu, r);
        return UV_ENOMEM;
    }
    r->cu = cu;
    r->easy = e;
    r->cb = cb;
    r->arg = arg;
    r->body_len = req->body_len;
    r->start_ns = uv_hrtime();
    /* lim_buf_init allocates nothing; a reused record's storage is kept under the new bound
     * (lim_buf_reserve checks len against max, whatever the capacity). */
    if (r->resp.data == NULL)
        lim_buf_init(&r->resp, req->max_response ? req->max_response : 1024 * 1024);
    else
        r->resp.max = req->max_response ? req->max_response : 1024 * 1024;
    for (const char *const *h = req->headers; h != NULL && *h != NULL; h++) {
        struct curl_slist *n = curl_slist_append(r->hdrs, *h);
        if (n == NULL)
            goto fail;
        r->hdrs = n;
    }

    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "gzip");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long) (req->connect_timeout_ms ? req->connect_timeout_ms : 10000));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) (req->timeout_ms ? req->timeout_ms : 60000));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_curl_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_curl_prereq);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, r);
    r->no_resend = strcmp(req->method, "GET") != 0;
    if (r->hdrs != NULL)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
    if (req->userpwd != NULL) {
        curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
        curl_easy_setopt(e, CURLOPT_USERPWD, req->userpwd);
    }
    if (strcmp(req->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len);
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body != NULL ? req->body : "");
        if (strcmp(req->method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    }
    if (curl_multi_add_handle(cu->multi, e) != CURLM_OK)
        goto fail;
    /* curl_multi_add_handle arms the timer itself; the transfer starts from the loop. */
    r->next = cu->reqs;
    if (cu->reqs != NULL)
        cu->reqs->prev = r;
    cu->reqs = r;
    cu->st.in_flight++;
    return 0;

fail:
    curl_slist_free_all(r->hdrs);
    easy_release(cu, e);
    req_put(cu, r);
    return UV_ENOMEM;
}

void lim_curl_stats(const lim_curl_t *cu, lim_curl_stats_t *out)
{
    *out = cu->st;
}

static void on_curl_handle_closed(uv_handle_t *h)
{
    lim_curl_t *cu = h->data;
    lim_curl_closed_cb cb;
    void *arg;

    if (--cu->closes_pending > 0)
        return;
    cb = cu->closed_cb;
    arg = cu->closed_arg;
    free(cu);
    if (cb != NULL)
        cb(arg);
}

static void on_defer(uv_timer_t *t)
{
    lim_curl_t *cu = lim_container_of(t, lim_curl_t, defer);

    while (cu->reqs != NULL)
        req_finish(cu, cu->reqs, CURLE_OK, 1);
    for (unsigned i = 0; i < cu->n_free; i++)
        curl_easy_cleanup(cu->free_easy[i]);
    cu->n_free = 0;
    while (cu->free_reqs != NULL) {
        creq_t *r = cu->free_reqs;
        cu->free_reqs = r->next;
        lim_buf_free(&r->resp);
        free(r);
    }
    cu->n_free_reqs = 0;
    /* May call the socket callback: the glue is still alive here. */
    curl_multi_cleanup(cu->multi);
    cu->multi = NULL;
    cu->closes_pending = 2;
    cu->timer.data = cu->defer.data = cu;
    uv_close((uv_handle_t *) &cu->timer, on_curl_handle_closed);
    uv_close((uv_handle_t *) &cu->defer, on_curl_handle_closed);
}

void lim_curl_close(lim_curl_t *cu, lim_curl_closed_cb cb, void *arg)
{
    if (cu->closing)
        return;
    cu->closing = 1;
    cu->closed_cb = cb;
    cu->closed_arg = arg;
    uv_timer_start(&cu->defer, on_defer, 0, 0);
}
