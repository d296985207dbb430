/* rb_metrics: Prometheus registries (see rb_metrics.h). */
#include "rb_metrics.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { M_COUNTER, M_GAUGE, M_HISTOGRAM } kind_t;

static const double s_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                  0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,  5, 10};
#define NBOUNDS (sizeof s_bounds / sizeof s_bounds[0])

struct rb_metric {
    char *name;
    char *labels;
    char *help;
    kind_t kind;
    double value;                    /* counter/gauge; histogram: sum */
    unsigned long long count;        /* histogram */
    unsigned long long buckets[NBOUNDS];
    rb_metric_t *next;
};

typedef struct registry {
    rb_metric_t *head, *tail;
    struct registry *next; /* s_owned */
} registry_t;
static registry_t s_process;
/* Set by rb_metrics_init_thread: a thread that runs a service of its own. */
static __thread registry_t *tl_own;
/* Every thread's own registry, for as long as the process lives: a
 * service's metrics outlive nothing but the thread's pointer to them. */
static registry_t *s_owned;
static pthread_mutex_t s_owned_lock = PTHREAD_MUTEX_INITIALIZER;

static registry_t *s_reg(void)
{
    return tl_own ? tl_own : &s_process;
}

int rb_metrics_init_thread(void)
{
    if (tl_own) return 0;
    registry_t *r = calloc(1, sizeof *r);
    if (!r) return -1;
    pthread_mutex_lock(&s_owned_lock);
    r->next = s_owned;
    s_owned = r;
    pthread_mutex_unlock(&s_owned_lock);
    tl_own = r;
    return 0;
}

static rb_metric_t *s_get(const char *name, const char *labels, const char *help, kind_t kind)
{
    registry_t *r = s_reg();
    for (rb_metric_t *m = r->head; m; m = m->next)
        if (strcmp(m->name, name) == 0 && strcmp(m->labels, labels ? labels : "") == 0) return m;
    rb_metric_t *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->name = strdup(name);
    m->labels = strdup(labels ? labels : "");
    m->help = strdup(help ? help : "");
    if (!m->name || !m->labels || !m->help) {
        free(m->name);
        free(m->labels);
        free(m->help);
        free(m);
        return NULL;
    }
    m->kind = kind;
    /* Keep metrics of one name together: the text format wants one family
     * block with one HELP/TYPE header. */
    rb_metric_t *after = NULL;
    for (rb_metric_t *p = r->head; p; p = p->next)
        if (strcmp(p->name, name) == 0) after = p;
    if (after) {
        m->next = after->next;
        after->next = m;
        if (r->tail == after) r->tail = m;
    } else if (r->tail) {
        r->tail->next = m;
        r->tail = m;
    } else {
        r->head = r->tail = m;
    }
    return m;
}

rb_metric_t *rb_counter(const char *name, const char *labels, const char *help)
{
    return s_get(name, labels, help, M_COUNTER);
}

rb_metric_t *rb_gauge(const char *name, const char *labels, const char *help)
{
    return s_get(name, labels, help, M_GAUGE);
}

rb_metric_t *rb_histogram(const char *name, const char *labels, const char *help)
{
    return s_get(name, labels, help, M_HISTOGRAM);
}

void rb_metric_inc(rb_metric_t *m)
{
    if (m) m->value += 1;
}

void rb_metric_add(rb_metric_t *m, double v)
{
    if (m) m->value += v;
}

void rb_metric_set(rb_metric_t *m, double v)
{
    if (m) m->value = v;
}

void rb_metric_observe(rb_metric_t *m, double seconds)
{
    if (!m) return;
    m->value += seconds;
    m->count++;
    for (size_t i = 0; i < NBOUNDS; i++)
        if (seconds <= s_bounds[i]) m->buckets[i]++;
}

double rb_metric_value(const rb_metric_t *m) { return m ? m->value : 0; }

static void s_series(rb_buf_t *out, const char *name, const char *suffix, const char *labels,
                     const char *extra, double v)
{
    bool any = *labels || (extra && *extra);
    rb_buf_printf(out, "%s%s%s%s%s%s%s %.17g\n", name, suffix, any ? "{" : "", labels,
                  *labels && extra && *extra ? "," : "", extra ? extra : "", any ? "}" : "", v);
}

void rb_metrics_render(rb_buf_t *out)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    const char *last = NULL;
    for (rb_metric_t *m = s_reg()->head; m; m = m->next) {
        if (!last || strcmp(last, m->name) != 0) {
            rb_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name,
                          types[m->kind]);
            last = m->name;
        }
        if (m->kind != M_HISTOGRAM) {
            s_series(out, m->name, "", m->labels, NULL, m->value);
            continue;
        }
        char le[32];
        for (size_t i = 0; i < NBOUNDS; i++) {
            snprintf(le, sizeof le, "le=\"%g\"", s_bounds[i]);
            s_series(out, m->name, "_bucket", m->labels, le, (double)m->buckets[i]);
        }
        s_series(out, m->name, "_bucket", m->labels, "le=\"+Inf\"", (double)m->count);
        s_series(out, m->name, "_sum", m->labels, NULL, m->value);
        s_series(out, m->name, "_count", m->labels, NULL, (double)m->count);
    }
}
