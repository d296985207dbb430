/* rb_log: one JSON object per line on stdout. A line is built in memory and
 * written with one write(2), so lines from several threads never interleave. */
#include "rb_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "rb_buf.h"

static const char *s_service = "reachback";
static rb_log_level_t s_level = RB_LOG_INFO;
/* Set in a thread that hosts a service of its own (rb_log_init_thread). */
static __thread const char *tl_service;
static __thread rb_log_level_t tl_level;
static const char *const s_names[] = {"debug", "info", "warn", "error"};

void rb_log_init(const char *service, rb_log_level_t level)
{
    s_service = service;
    s_level = level;
}

void rb_log_init_thread(const char *service, rb_log_level_t level)
{
    tl_service = service;
    tl_level = level;
}

void rb_log_set_level(rb_log_level_t level)
{
    if (tl_service)
        tl_level = level;
    else
        s_level = level;
}

static rb_log_level_t s_threshold(void)
{
    return tl_service ? tl_level : s_level;
}

int rb_log_level_parse(const char *s, rb_log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (s && strcmp(s, s_names[i]) == 0) {
            *out = (rb_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

static void s_emit(const char *level, const char *event, const char *fields, const char *fmt,
                   va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);

    rb_buf_t b = RB_BUF_INIT;
    rb_buf_printf(&b, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"svc\":\"", ts,
                  (long)(tv.tv_usec / 1000), level);
    rb_buf_json_escape(&b, tl_service ? tl_service : s_service);
    rb_buf_puts(&b, "\",\"event\":\"");
    rb_buf_json_escape(&b, event);
    rb_buf_puts(&b, "\",\"msg\":\"");
    rb_buf_json_escape(&b, msg);
    rb_buf_puts(&b, "\"");
    if (fields && *fields) {
        rb_buf_puts(&b, ",");
        rb_buf_puts(&b, fields);
    }
    rb_buf_puts(&b, "}\n");
    if (b.data) {
        ssize_t off = 0;
        while ((size_t)off < b.len) {
            ssize_t n = write(STDOUT_FILENO, b.data + off, b.len - (size_t)off);
            if (n <= 0) break;
            off += n;
        }
    }
    rb_buf_free(&b);
}

void rb_log(rb_log_level_t level, const char *event, const char *fmt, ...)
{
    if (level < s_threshold()) return;
    va_list ap;
    va_start(ap, fmt);
    s_emit(s_names[level], event, NULL, fmt, ap);
    va_end(ap);
}

void rb_log_with(rb_log_level_t level, const char *event, const char *fields, const char *fmt,
                 ...)
{
    if (level < s_threshold()) return;
    va_list ap;
    va_start(ap, fmt);
    s_emit(s_names[level], event, fields, fmt, ap);
    va_end(ap);
}

void rb_audit(const char *fields, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_emit("audit", "audit", fields, fmt, ap);
    va_end(ap);
}

void rb_fatal(const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_emit(s_names[RB_LOG_ERROR], event, NULL, fmt, ap);
    va_end(ap);
    exit(1);
}
