/* rb_metrics: a process-wide registry rendered in the Prometheus text format
 * (version 0.0.4). Metrics are created at start and updated from the loop
 * thread; no locking. Names get the "reachback_" prefix from the caller. */
#ifndef RB_METRICS_H
#define RB_METRICS_H
#include "rb_buf.h"

typedef struct rb_metric rb_metric_t;

/* labels is NULL or a Prometheus label set without braces, e.g.
 * "rcode=\"NXDOMAIN\"". The same name and labels return the same metric.
 * Returns NULL only when memory runs out. */
rb_metric_t *rb_counter(const char *name, const char *labels, const char *help);
rb_metric_t *rb_gauge(const char *name, const char *labels, const char *help);
/* Buckets in seconds from 100 us to 10 s. */
rb_metric_t *rb_histogram(const char *name, const char *labels, const char *help);

/* All accept NULL (a metric that could not be created). */
void rb_metric_inc(rb_metric_t *m);
void rb_metric_add(rb_metric_t *m, double v);
void rb_metric_set(rb_metric_t *m, double v);
void rb_metric_observe(rb_metric_t *m, double seconds);
double rb_metric_value(const rb_metric_t *m);

void rb_metrics_render(rb_buf_t *out);

/* Gives the calling thread a registry of its own, which every call above
 * made on it uses from then on: reachback-gateway runs an edge and a
 * forwarder on two threads, each with its own /metrics. Call it before the
 * thread creates any metric; the registry lives as long as the process.
 * 0, or -1 when memory ran out (the thread keeps the process's). */
int rb_metrics_init_thread(void);

#endif
