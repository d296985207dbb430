/* edge_auth: see edge_auth.h.
 *
 * Jobs move queue -> (a worker) -> done list -> loop. One mutex guards both
 * lists and the cancelled flags; a worker holds no lock while hashing. The
 * eventfd counts finished jobs; the loop drains the done list whenever it
 * becomes readable. */
#include "edge_auth.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "rb_log.h"
#include "rb_passwd.h"

typedef struct job {
    struct job *next;
    char *user;
    char *password;      /* wiped and freed by the worker */
    const char *hash;    /* borrowed from users, or the dummy */
    bool known;
    bool cancelled;
    int result;          /* rb_passwd_verify's answer */
    edge_auth_done_fn *fn;
    void *arg;
} job_t;

struct edge_auth {
    rb_loop_t *loop;
    const edge_users_t *users;
    int efd;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *queue_head, *queue_tail;
    job_t *running;      /* jobs being hashed, chained, so cancel finds them */
    job_t *done_head, *done_tail;   /* finished, oldest first */
    size_t pending;      /* queued + running + done, not yet delivered */
    bool stop;
    pthread_t *threads;
    unsigned nthreads;
    char dummy[RB_PASSWD_MAX];
};

static void s_job_free(job_t *j)
{
    if (!j) return;
    if (j->password) {
        OPENSSL_cleanse(j->password, strlen(j->password));
        free(j->password);
    }
    free(j->user);
    free(j);
}

static void s_free_list(job_t *j)
{
    while (j) {
        job_t *next = j->next;
        s_job_free(j);
        j = next;
    }
}

static void s_unlink(job_t **head, job_t *j)
{
    for (job_t **pp = head; *pp; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            return;
        }
    }
}

static void *s_worker(void *arg)
{
    edge_auth_t *a = arg;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->stop && !a->queue_head) pthread_cond_wait(&a->cv, &a->mu);
        if (a->stop) break;
        job_t *j = a->queue_head;
        a->queue_head = j->next;
        if (!a->queue_head) a->queue_tail = NULL;
        j->next = a->running;
        a->running = j;
        pthread_mutex_unlock(&a->mu);

        j->result = rb_passwd_verify(j->password, j->hash);
        OPENSSL_cleanse(j->password, strlen(j->password));

        pthread_mutex_lock(&a->mu);
        s_unlink(&a->running, j);
        j->next = NULL;
        if (a->done_tail) a->done_tail->next = j;
        else a->done_head = j;
        a->done_tail = j;
        uint64_t one = 1;
        /* The counter only wakes the loop; a failed write (counter
         * saturated) still leaves it readable. */
        ssize_t w = write(a->efd, &one, sizeof one);
        (void)w;
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* Delivers finished jobs one at a time, taking each off the list under the
 * lock: a callback may cancel other connections' jobs, and those must still
 * be on the list to be found. */
static void s_on_done(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    edge_auth_t *a = arg;
    uint64_t n;
    if (read(a->efd, &n, sizeof n) < 0 && errno != EAGAIN) return;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        job_t *j = a->done_head;
        if (j) {
            a->done_head = j->next;
            if (!a->done_head) a->done_tail = NULL;
            a->pending--;
        }
        bool cancelled = j && j->cancelled;
        pthread_mutex_unlock(&a->mu);
        if (!j) break;
        if (j->result < 0)
            rb_warn("auth_bad_hash", "user '%s': the users file entry is not a valid hash",
                    j->user);
        if (!cancelled) j->fn(j->arg, j->known && j->result == 1);
        s_job_free(j);
    }
}

edge_auth_t *edge_auth_new(rb_loop_t *loop, const edge_users_t *users, unsigned threads)
{
    if (threads == 0) return NULL;
    edge_auth_t *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->loop = loop;
    a->users = users;
    a->efd = -1;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    /* The dummy's password is random and thrown away: nothing matches it. */
    unsigned char rnd[24];
    char pw[sizeof rnd * 2 + 1];
    if (RAND_bytes(rnd, sizeof rnd) != 1) goto fail;
    for (size_t i = 0; i < sizeof rnd; i++) snprintf(pw + 2 * i, 3, "%02x", rnd[i]);
    int hr = rb_passwd_hash(pw, RB_PASSWD_DEFAULT_LN, 8, 1, a->dummy);
    OPENSSL_cleanse(pw, sizeof pw);
    OPENSSL_cleanse(rnd, sizeof rnd);
    if (hr < 0) {
        rb_error("auth_init", "cannot make the dummy hash");
        goto fail;
    }
    a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->efd < 0 || rb_loop_add_fd(loop, a->efd, RB_EV_READ, s_on_done, a) < 0) {
        rb_error("auth_init", "eventfd: %s", strerror(errno));
        goto fail;
    }
    a->threads = calloc(threads, sizeof *a->threads);
    if (!a->threads) goto fail;
    for (unsigned i = 0; i < threads; i++) {
        if (pthread_create(&a->threads[i], NULL, s_worker, a) != 0) {
            rb_error("auth_init", "cannot start worker thread %u", i);
            goto fail;
        }
        a->nthreads++;
    }
    return a;
fail:
    edge_auth_destroy(&a);
    return NULL;
}

void edge_auth_destroy(edge_auth_t **ap)
{
    if (!ap || !*ap) return;
    edge_auth_t *a = *ap;
    pthread_mutex_lock(&a->mu);
    a->stop = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    for (unsigned i = 0; i < a->nthreads; i++) pthread_join(a->threads[i], NULL);
    free(a->threads);
    s_free_list(a->queue_head);
    s_free_list(a->running);
    s_free_list(a->done_head);
    if (a->efd >= 0) {
        rb_loop_del_fd(a->loop, a->efd);
        close(a->efd);
    }
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    OPENSSL_cleanse(a->dummy, sizeof a->dummy);
    free(a);
    *ap = NULL;
}

int edge_auth_check(edge_auth_t *a, const char *user, const char *password,
                    edge_auth_done_fn *fn, void *arg)
{
    job_t *j = calloc(1, sizeof *j);
    if (!j) return -1;
    j->user = strdup(user);
    j->password = strdup(password);
    if (!j->user || !j->password) {
        s_job_free(j);
        return -1;
    }
    const char *h = edge_users_lookup(a->users, user);
    j->known = h != NULL;
    j->hash = h ? h : a->dummy;
    j->fn = fn;
    j->arg = arg;
    pthread_mutex_lock(&a->mu);
    if (a->queue_tail) a->queue_tail->next = j;
    else a->queue_head = j;
    a->queue_tail = j;
    a->pending++;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    return 0;
}

void edge_auth_cancel(edge_auth_t *a, void *arg)
{
    pthread_mutex_lock(&a->mu);
    /* Queued jobs are dropped at once; running and finished ones are
     * flagged and freed by the loop without a callback. */
    job_t **pp = &a->queue_head;
    a->queue_tail = NULL;
    while (*pp) {
        job_t *j = *pp;
        if (j->arg == arg) {
            *pp = j->next;
            a->pending--;
            s_job_free(j);
            continue;
        }
        a->queue_tail = j;
        pp = &j->next;
    }
    for (job_t *j = a->running; j; j = j->next)
        if (j->arg == arg) j->cancelled = true;
    for (job_t *j = a->done_head; j; j = j->next)
        if (j->arg == arg) j->cancelled = true;
    pthread_mutex_unlock(&a->mu);
}

size_t edge_auth_pending(const edge_auth_t *a)
{
    pthread_mutex_lock((pthread_mutex_t *)&a->mu);
    size_t n = a->pending;
    pthread_mutex_unlock((pthread_mutex_t *)&a->mu);
    return n;
}
