/* tls_fixture: throwaway certificates for the tests that do real TLS, made
 * by the openssl command in a temporary directory:
 *   ca.crt/ca.key     a test CA
 *   srv.crt/srv.key   a server certificate signed by it, for DNS edge.test
 *                     and IP 127.0.0.1 (CN edge), serverAuth
 * Tests add what else they need with tlsfx_sh() in the same directory.
 * tlsfx_pair_setup also makes the two rb_tls contexts most tests want.
 * Header-only, like redis_fixture.h. */
#ifndef TLS_FIXTURE_H
#define TLS_FIXTURE_H
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "rb_tls.h"

#define TLSFX_EC "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"

static char tlsfx_dir[64];

/* Runs cmd in the fixture's directory, its output discarded. Returns the
 * exit status (0 on success). */
static inline int tlsfx_sh(const char *cmd)
{
    char full[2048];
    snprintf(full, sizeof full, "cd '%s' && (%s) >/dev/null 2>&1", tlsfx_dir, cmd);
    return system(full);
}

/* The full path of file in the fixture's directory. Paths are interned: the
 * same name always gives the same pointer, valid until tlsfx_teardown, so
 * any number of them can be used in one expression. */
static inline const char *tlsfx_path(const char *file)
{
    static char paths[32][160];
    static size_t n;
    char want[160];
    snprintf(want, sizeof want, "%s/%s", tlsfx_dir, file);
    for (size_t i = 0; i < n; i++)
        if (strcmp(paths[i], want) == 0) return paths[i];
    if (n == sizeof paths / sizeof paths[0]) abort();   /* a test uses too many names */
    memcpy(paths[n], want, sizeof want);
    return paths[n++];
}

/* Makes the directory (/tmp/rb-<name>-XXXXXX), the CA and the server
 * certificate. 0 or -1. */
static inline int tlsfx_setup(const char *name)
{
    snprintf(tlsfx_dir, sizeof tlsfx_dir, "/tmp/rb-%s-XXXXXX", name);
    if (!mkdtemp(tlsfx_dir)) return -1;
    return tlsfx_sh("openssl req -x509 " TLSFX_EC " -keyout ca.key -out ca.crt"
                    " -subj /CN=rb-test-ca -days 2 && "
                    "printf 'subjectAltName=DNS:edge.test,IP:127.0.0.1\\n"
                    "extendedKeyUsage=serverAuth\\n' > srv.ext && "
                    "openssl req " TLSFX_EC " -keyout srv.key -out srv.csr -subj /CN=edge && "
                    "openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial"
                    " -out srv.crt -days 2 -extfile srv.ext") == 0 ? 0 : -1;
}

/* Removes the directory. 0 or -1. */
static inline int tlsfx_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tlsfx_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* For tests that run a tunnel server and client in one process: the
 * fixture, a server context for srv.crt and a client context trusting
 * ca.crt; SIGPIPE ignored, as the services run. 0 or -1. */
static inline int tlsfx_pair_setup(const char *name, SSL_CTX **srv, SSL_CTX **cli)
{
    signal(SIGPIPE, SIG_IGN);
    if (tlsfx_setup(name) != 0) return -1;
    char err[512];
    *srv = rb_tls_server_ctx(tlsfx_path("srv.crt"), tlsfx_path("srv.key"), NULL, 0, err, sizeof err);
    *cli = rb_tls_client_ctx(tlsfx_path("ca.crt"), NULL, NULL, err, sizeof err);
    return *srv && *cli ? 0 : -1;
}

static inline int tlsfx_pair_teardown(SSL_CTX **srv, SSL_CTX **cli)
{
    SSL_CTX_free(*srv);
    SSL_CTX_free(*cli);
    *srv = *cli = NULL;
    return tlsfx_teardown();
}

#endif
