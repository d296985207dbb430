/* forwarder_resolve: see forwarder_resolve.h. Requests and answers travel in
 * two mutex-protected lists; an eventfd wakes the loop. The owners' map and
 * an owner's pending count are only touched on the loop's thread; its
 * running count is the workers', under the mutex. */
#include "forwarder_resolve.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "rb_smap.h"

/* Queued and running, all owners: room for 32 owners at their cap. */
#define QUEUE_MAX 1024

typedef struct owner {
    unsigned pending; /* queued, running or answered, not yet delivered */
    unsigned running; /* on a worker now (under mu) */
    char name[];
} owner_t;

typedef struct job {
    struct job *next;
    owner_t *owner; /* lives while it has pending lookups */
    uint64_t token;
    int err;
    uint32_t ip;
    char host[256];
} job_t;

struct resolve {
    rb_loop_t *loop;
    resolve_fn *fn;
    void *arg;
    resolve_lookup_fn *lookup;
    int efd;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *todo, *done;
    size_t queued;
    bool stop;
    pthread_t th[RESOLVE_WORKERS];
    int nth;
    rb_smap_t *owners; /* name -> owner_t with pending lookups */
};

static int s_getaddrinfo(const char *host, uint32_t *ip)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int err = getaddrinfo(host, NULL, &hints, &res);
    if (err == 0) {
        *ip = ntohl(((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr);
        freeaddrinfo(res);
    }
    return err;
}

/* Under mu: unlinks and returns the next job to run, or NULL. Among owners
 * under the running cap, the one with the fewest running goes first (the
 * oldest job among equals): a user whose stuck lookup ends must not get its
 * worker straight back ahead of someone who has none. */
static job_t *s_take_runnable(resolve_t *r)
{
    job_t **best = NULL;
    for (job_t **pj = &r->todo; *pj; pj = &(*pj)->next) {
        unsigned running = (*pj)->owner->running;
        if (running < RESOLVE_RUNNING_PER_OWNER && (!best || running < (*best)->owner->running)) {
            best = pj;
            if (running == 0) break;
        }
    }
    if (!best) return NULL;
    job_t *j = *best;
    *best = j->next;
    j->owner->running++;
    return j;
}

static void *s_worker(void *arg)
{
    resolve_t *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        job_t *j = NULL;
        while (!r->stop && !(j = s_take_runnable(r)))
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop) break;
        pthread_mutex_unlock(&r->mu);
        j->err = r->lookup(j->host, &j->ip);
        pthread_mutex_lock(&r->mu);
        /* A job of this owner held back by the cap may run now. */
        if (j->owner->running-- == RESOLVE_RUNNING_PER_OWNER && r->todo)
            pthread_cond_broadcast(&r->cv);
        j->next = r->done;
        r->done = j;
        uint64_t one = 1;
        if (write(r->efd, &one, sizeof one) < 0) { /* the counter is full: already woken */
        }
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void s_owner_release(resolve_t *r, owner_t *o)
{
    if (--o->pending == 0) {
        rb_smap_del(r->owners, o->name, o);
        free(o);
    }
}

static void s_on_event(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    resolve_t *r = arg;
    uint64_t n;
    if (read(fd, &n, sizeof n) < 0) { /* spurious wake-up */
    }
    pthread_mutex_lock(&r->mu);
    job_t *list = r->done;
    r->done = NULL;
    pthread_mutex_unlock(&r->mu);
    while (list) {
        job_t *j = list;
        list = j->next;
        pthread_mutex_lock(&r->mu);
        r->queued--;
        pthread_mutex_unlock(&r->mu);
        s_owner_release(r, j->owner);
        r->fn(r->arg, j->token, j->err, j->ip);
        free(j);
    }
}

resolve_t *resolve_new_with(rb_loop_t *loop, resolve_fn *fn, void *arg, resolve_lookup_fn *lookup)
{
    resolve_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->loop = loop;
    r->fn = fn;
    r->arg = arg;
    r->lookup = lookup ? lookup : s_getaddrinfo;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd < 0 || !(r->owners = rb_smap_new()) ||
        rb_loop_add_fd(loop, r->efd, RB_EV_READ, s_on_event, r) < 0) {
        resolve_destroy(&r);
        return NULL;
    }
    for (; r->nth < RESOLVE_WORKERS; r->nth++) {
        if (pthread_create(&r->th[r->nth], NULL, s_worker, r) != 0) {
            resolve_destroy(&r);
            return NULL;
        }
    }
    return r;
}

resolve_t *resolve_new(rb_loop_t *loop, resolve_fn *fn, void *arg)
{
    return resolve_new_with(loop, fn, arg, NULL);
}

static void s_free_list(job_t *j)
{
    while (j) {
        job_t *next = j->next;
        free(j);
        j = next;
    }
}

static void s_free_owner(void *arg, const char *key, void *val)
{
    rb_smap_del(arg, key, val);
    free(val);
}

void resolve_destroy(resolve_t **pr)
{
    if (!pr || !*pr) return;
    resolve_t *r = *pr;
    *pr = NULL;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < r->nth; i++)
        pthread_join(r->th[i], NULL);
    if (r->efd >= 0) {
        rb_loop_del_fd(r->loop, r->efd);
        close(r->efd);
    }
    s_free_list(r->todo);
    s_free_list(r->done);
    if (r->owners) rb_smap_each(r->owners, s_free_owner, r->owners);
    rb_smap_destroy(&r->owners);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

int resolve_start(resolve_t *r, const char *host, uint64_t token, const char *owner)
{
    if (strlen(host) > 255 || resolve_pending(r, owner) >= RESOLVE_PER_OWNER) return -1;
    job_t *j = calloc(1, sizeof *j);
    if (!j) return -1;
    j->token = token;
    strcpy(j->host, host);
    owner_t *o = rb_smap_get(r->owners, owner);
    if (!o) {
        size_t len = strlen(owner);
        o = calloc(1, sizeof *o + len + 1);
        if (!o) goto fail;
        memcpy(o->name, owner, len + 1);
        if (rb_smap_put(r->owners, o->name, o, NULL) < 0) {
            free(o);
            goto fail;
        }
    }
    j->owner = o;
    o->pending++;
    pthread_mutex_lock(&r->mu);
    if (r->queued >= QUEUE_MAX) {
        pthread_mutex_unlock(&r->mu);
        s_owner_release(r, o);
        goto fail;
    }
    r->queued++;
    job_t **tail = &r->todo;
    while (*tail)
        tail = &(*tail)->next;
    *tail = j;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
fail:
    free(j);
    return -1;
}

bool resolve_cancel(resolve_t *r, uint64_t token)
{
    job_t *j = NULL;
    pthread_mutex_lock(&r->mu);
    for (job_t **pj = &r->todo; *pj; pj = &(*pj)->next) {
        if ((*pj)->token == token) {
            j = *pj;
            *pj = j->next;
            r->queued--;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (!j) return false;
    s_owner_release(r, j->owner);
    free(j);
    return true;
}

size_t resolve_pending(const resolve_t *r, const char *owner)
{
    const owner_t *o = rb_smap_get(r->owners, owner);
    return o ? o->pending : 0;
}
