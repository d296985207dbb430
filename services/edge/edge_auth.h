/* edge_auth: password checks off the loop. scrypt takes tens of
 * milliseconds at the default cost (by design), so checks run on a small
 * pool of worker threads fed by a job queue; results come back to the loop
 * through an eventfd and are delivered there.
 *
 * An unknown user is checked against a dummy hash of the default cost, so
 * that the answer and the time taken are those of a wrong password. */
#ifndef EDGE_AUTH_H
#define EDGE_AUTH_H
#include <stdbool.h>
#include <stddef.h>
#include "edge_users.h"
#include "rb_loop.h"

typedef struct edge_auth edge_auth_t;

/* Called on the loop thread; ok is true when the password matched. */
typedef void(edge_auth_done_fn)(void *arg, bool ok);

/* users is borrowed and must outlive the pool. threads >= 1. NULL on
 * error (logged). */
edge_auth_t *edge_auth_new(rb_loop_t *loop, const edge_users_t *users, unsigned threads);
/* Accepts NULL; clears the pointer. Waits for running checks; pending
 * callbacks are dropped. */
void edge_auth_destroy(edge_auth_t **a);
/* Queues a check; the password is copied and wiped after use. fn is called
 * once, later, from the loop (never from inside this call). 0 or -1. */
int edge_auth_check(edge_auth_t *a, const char *user, const char *password,
                    edge_auth_done_fn *fn, void *arg);
/* Forgets the checks whose arg is arg: fn will not be called for them. */
void edge_auth_cancel(edge_auth_t *a, void *arg);
/* Checks queued or running (for status). */
size_t edge_auth_pending(const edge_auth_t *a);

#endif
