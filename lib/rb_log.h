/* rb_log: structured logging, one JSON object per line on stdout:
 *   {"ts":"2026-11-25T16:40:01.123Z","level":"info","svc":"edge",
 *    "event":"logon_ok","msg":"alice from 127.0.0.1:5000 got 127.77.0.2"}
 * "event" is a short stable name for machines; "msg" is for people.
 * Never log secrets (passwords, tokens, keys). */
#ifndef RB_LOG_H
#define RB_LOG_H

typedef enum { RB_LOG_DEBUG = 0, RB_LOG_INFO, RB_LOG_WARN, RB_LOG_ERROR } rb_log_level_t;

void rb_log_init(const char *service, rb_log_level_t level);
/* For a thread that runs a service of its own (reachback-gateway hosts an
 * edge and a forwarder in one process): its lines carry that service's name
 * and follow that level; threads without it use rb_log_init's. */
void rb_log_init_thread(const char *service, rb_log_level_t level);
/* Parses "debug", "info", "warn", "error"; returns -1 for anything else. */
int rb_log_level_parse(const char *s, rb_log_level_t *out);
/* This thread's level if it has its own (rb_log_init_thread), else the
 * process's. */
void rb_log_set_level(rb_log_level_t level);

void rb_log(rb_log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* rb_log with machine-readable fields after "msg": fields is a JSON object's
 * members without braces ("\"port\":22,\"user\":\"alice\""), already escaped. */
void rb_log_with(rb_log_level_t level, const char *event, const char *fields, const char *fmt,
                 ...) __attribute__((format(printf, 4, 5)));
/* An audit record ("level":"audit", "event":"audit"), written whatever the
 * level: an operator who quietens the log must not lose the record of who
 * connected to whom. fields as for rb_log_with. */
void rb_audit(const char *fields, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define rb_debug(ev, ...) rb_log(RB_LOG_DEBUG, ev, __VA_ARGS__)
#define rb_info(ev, ...) rb_log(RB_LOG_INFO, ev, __VA_ARGS__)
#define rb_warn(ev, ...) rb_log(RB_LOG_WARN, ev, __VA_ARGS__)
#define rb_error(ev, ...) rb_log(RB_LOG_ERROR, ev, __VA_ARGS__)

/* Logs at error level and exits with status 1: for start-up failures only. */
void rb_fatal(const char *event, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

#endif
