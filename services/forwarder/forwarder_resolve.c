/* forwarder_resolve: see forwarder_resolve.h. Requests and answers travel in
 * two mutex-protected lists; an eventfd wakes the loop. The per-owner
 * counts are only touched on the loop's thread. */
#include "forwarder_resolve.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "rb_imap.h"

/* A lookup of a name whose servers do not answer blocks its worker for
 * the resolver's whole timeout; workers mostly wait, so there are several,
 * and one owner (a session) may hold at most RESOLVE_PER_OWNER of them. */
#define WORKERS 8
#define QUEUE_MAX 256

typedef struct job {
    struct job *next;
    uint64_t token, owner;
    int err;
    uint32_t ip;
    char host[256];
} job_t;

struct resolve {
    rb_loop_t *loop;
    resolve_fn *fn;
    void *arg;
    int efd;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *todo, *todo_tail, *done;
    size_t queued;
    bool stop;
    pthread_t th[WORKERS];
    int nth;
    rb_imap_t *per_owner; /* owner -> lookups queued or running */
};

/* -1 when memory runs out (the count is unchanged then). */
static int s_owner_add(resolve_t *r, uint64_t owner, int d)
{
    uintptr_t n = (uintptr_t)rb_imap_get(r->per_owner, owner) + (uintptr_t)(intptr_t)d;
    if (n) return rb_imap_put(r->per_owner, owner, (void *)n);
    rb_imap_del(r->per_owner, owner);
    return 0;
}

static void *s_worker(void *arg)
{
    resolve_t *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->todo && !r->stop)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop) break;
        job_t *j = r->todo;
        r->todo = j->next;
        if (!r->todo) r->todo_tail = NULL;
        pthread_mutex_unlock(&r->mu);
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        j->err = getaddrinfo(j->host, NULL, &hints, &res);
        if (j->err == 0) {
            j->ip = ntohl(((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr);
            freeaddrinfo(res);
        }
        pthread_mutex_lock(&r->mu);
        j->next = r->done;
        r->done = j;
        uint64_t one = 1;
        if (write(r->efd, &one, sizeof one) < 0) { /* the counter is full: already woken */
        }
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
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
        s_owner_add(r, j->owner, -1);
        r->fn(r->arg, j->token, j->err, j->ip);
        free(j);
    }
}

resolve_t *resolve_new(rb_loop_t *loop, resolve_fn *fn, void *arg)
{
    resolve_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->loop = loop;
    r->fn = fn;
    r->arg = arg;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd < 0 || !(r->per_owner = rb_imap_new()) || rb_loop_add_fd(loop, r->efd, RB_EV_READ, s_on_event, r) < 0) {
        resolve_destroy(&r);
        return NULL;
    }
    for (; r->nth < WORKERS; r->nth++) {
        if (pthread_create(&r->th[r->nth], NULL, s_worker, r) != 0) {
            resolve_destroy(&r);
            return NULL;
        }
    }
    return r;
}

static void s_free_list(job_t *j)
{
    while (j) {
        job_t *next = j->next;
        free(j);
        j = next;
    }
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
    rb_imap_destroy(&r->per_owner);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

int resolve_start(resolve_t *r, const char *host, uint64_t token, uint64_t owner)
{
    if (strlen(host) > 255 || resolve_pending(r, owner) >= RESOLVE_PER_OWNER) return -1;
    job_t *j = calloc(1, sizeof *j);
    if (!j) return -1;
    j->token = token;
    j->owner = owner;
    strcpy(j->host, host);
    pthread_mutex_lock(&r->mu);
    if (r->queued >= QUEUE_MAX) {
        pthread_mutex_unlock(&r->mu);
        free(j);
        return -1;
    }
    if (s_owner_add(r, owner, 1) < 0) {
        pthread_mutex_unlock(&r->mu);
        free(j);
        return -1;
    }
    r->queued++;
    if (r->todo_tail)
        r->todo_tail->next = j;
    else
        r->todo = j;
    r->todo_tail = j;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

size_t resolve_pending(const resolve_t *r, uint64_t owner)
{
    return (size_t)(uintptr_t)rb_imap_get(r->per_owner, owner);
}
