/* ctl_json: a small, bounded JSON parser for reachback-ctl, which reads the
 * broker's admin API (flat objects of strings and numbers, arrays of them,
 * and one level of nesting for kick). The answer comes from the network,
 * so every limit is explicit: input size, nesting depth, node count; a
 * malformed document (truncated, trailing bytes, bad escapes, control
 * characters in strings, lone surrogates) is an error, never a crash.
 *
 * The parsed document is a tree of nodes held in two arrays (nodes and
 * decoded strings), freed in one call. Values are addressed by index;
 * CTL_JSON_NONE means "absent". */
#ifndef CTL_JSON_H
#define CTL_JSON_H
#include <stddef.h>

#define CTL_JSON_MAX_INPUT (16u * 1024 * 1024)
#define CTL_JSON_MAX_DEPTH 16
#define CTL_JSON_MAX_NODES 1000000
#define CTL_JSON_NONE (-1)

typedef enum {
    CTL_JSON_NULL,
    CTL_JSON_FALSE,
    CTL_JSON_TRUE,
    CTL_JSON_NUMBER,
    CTL_JSON_STRING,
    CTL_JSON_ARRAY,
    CTL_JSON_OBJECT
} ctl_json_type_t;

typedef struct ctl_json ctl_json_t;

/* Parses text[0..len). NULL on error, with the reason and byte offset in
 * err. */
ctl_json_t *ctl_json_parse(const char *text, size_t len, char *err, size_t errlen);
/* Accepts NULL; clears the pointer. */
void ctl_json_free(ctl_json_t **j);

int ctl_json_root(const ctl_json_t *j);
ctl_json_type_t ctl_json_type(const ctl_json_t *j, int v);
/* Children of an array or object, in document order. */
size_t ctl_json_count(const ctl_json_t *j, int v);
int ctl_json_child(const ctl_json_t *j, int v);   /* first child, or NONE */
int ctl_json_next(const ctl_json_t *j, int v);    /* next sibling, or NONE */
/* The member name of an object's child (NULL for array elements). */
const char *ctl_json_key(const ctl_json_t *j, int v);
/* The member named key of object v, or NONE (the first, if repeated). */
int ctl_json_get(const ctl_json_t *j, int v, const char *key);
/* The text of a scalar: a string decoded (UTF-8; may contain any byte but
 * NUL, which ends it early), a number as written, "true", "false",
 * "null"; "" for arrays, objects and NONE. */
const char *ctl_json_str(const ctl_json_t *j, int v);
/* Shorthand: ctl_json_str of member key of v ("" when absent). */
const char *ctl_json_field(const ctl_json_t *j, int v, const char *key);

#endif
