/* Tests for rb_tls: contexts built from throwaway certificates (made with
 * the openssl command line in a temp dir) and real TLS handshakes over a
 * socketpair. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <fcntl.h>
#include <openssl/err.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rb_tls.h"
#include "../tls_fixture.h"


/* The fixture's CA and server certificate (edge.test), plus a client
 * certificate signed by the CA, a second, unrelated CA, and a key that
 * belongs to nothing. */
static int s_setup(void **state)
{
    (void)state;
    if (tlsfx_setup("tls-test") != 0) return -1;
    return tlsfx_sh("openssl req -x509 " TLSFX_EC " -keyout other.key -out other.crt"
                    " -subj /CN=rb-other-ca -days 2 && "
                    "printf 'extendedKeyUsage=clientAuth\\n' > cli.ext && "
                    "openssl req " TLSFX_EC " -keyout cli.key -out cli.csr -subj /CN=alice && "
                    "openssl x509 -req -in cli.csr -CA ca.crt -CAkey ca.key -CAcreateserial"
                    " -out cli.crt -days 2 -extfile cli.ext && "
                    "openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:P-256 -out stray.key")
               == 0 ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    return tlsfx_teardown();
}

typedef struct {
    int server_ok, client_ok;
    long client_verify;
    int version;
} s_result_t;

/* Runs a handshake between two fresh SSL objects over a non-blocking
 * socketpair, stepping each side in turn until both finish or one fails.
 * host, when set, is the name the client checks. */
static s_result_t s_handshake(SSL_CTX *sctx, SSL_CTX *cctx, const char *host)
{
    s_result_t r = {0, 0, -1, 0};
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    for (int i = 0; i < 2; i++) fcntl(sv[i], F_SETFL, fcntl(sv[i], F_GETFL) | O_NONBLOCK);
    SSL *s = SSL_new(sctx), *c = SSL_new(cctx);
    assert_non_null(s);
    assert_non_null(c);
    SSL_set_fd(s, sv[0]);
    SSL_set_fd(c, sv[1]);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    if (host) {
        assert_int_equal(SSL_set1_host(c, host), 1);
        SSL_set_tlsext_host_name(c, host);
    }
    int sdone = 0, cdone = 0, failed = 0;
    for (int round = 0; round < 100 && !failed && !(sdone && cdone); round++) {
        if (!cdone) {
            int rc = SSL_do_handshake(c);
            if (rc == 1) {
                cdone = 1;
            } else {
                int e = SSL_get_error(c, rc);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) failed = 1;
            }
        }
        if (!sdone && !failed) {
            int rc = SSL_do_handshake(s);
            if (rc == 1) {
                sdone = 1;
            } else {
                int e = SSL_get_error(s, rc);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) failed = 1;
            }
        }
    }
    /* In TLS 1.3 the client can finish before the server has judged the
     * client's certificate, so only the server's verdict says whether the
     * connection was accepted. */
    r.client_ok = cdone;
    r.server_ok = sdone;
    r.client_verify = SSL_get_verify_result(c);
    r.version = SSL_version(c);
    SSL_free(s);
    SSL_free(c);
    close(sv[0]);
    close(sv[1]);
    ERR_clear_error();
    return r;
}

static SSL_CTX *s_server(const char *client_ca, int require)
{
    char err[512] = "";
    SSL_CTX *ctx = rb_tls_server_ctx(tlsfx_path("srv.crt"), tlsfx_path("srv.key"), client_ca, require, err,
                                     sizeof err);
    if (!ctx) fail_msg("server ctx: %s", err);
    return ctx;
}

static SSL_CTX *s_client(const char *ca, const char *cert, const char *key)
{
    char err[512] = "";
    SSL_CTX *ctx = rb_tls_client_ctx(ca, cert, key, err, sizeof err);
    if (!ctx) fail_msg("client ctx: %s", err);
    return ctx;
}

static void test_handshake_tls13(void **state)
{
    (void)state;
    SSL_CTX *sctx = s_server(NULL, 0), *cctx = s_client(tlsfx_path("ca.crt"), NULL, NULL);
    assert_true(SSL_CTX_get_mode(sctx) & SSL_MODE_RELEASE_BUFFERS);
    assert_true(SSL_CTX_get_mode(cctx) & SSL_MODE_RELEASE_BUFFERS);
    assert_true(SSL_CTX_get_options(sctx) & SSL_OP_NO_RENEGOTIATION);
    assert_int_equal(SSL_CTX_get_min_proto_version(sctx), TLS1_3_VERSION);
    assert_int_equal(SSL_CTX_get_min_proto_version(cctx), TLS1_3_VERSION);

    s_result_t r = s_handshake(sctx, cctx, "edge.test");
    assert_true(r.client_ok);
    assert_true(r.server_ok);
    assert_int_equal(r.version, TLS1_3_VERSION);
    assert_int_equal(r.client_verify, X509_V_OK);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

static void test_other_ca_fails(void **state)
{
    (void)state;
    SSL_CTX *sctx = s_server(NULL, 0), *cctx = s_client(tlsfx_path("other.crt"), NULL, NULL);
    s_result_t r = s_handshake(sctx, cctx, "edge.test");
    assert_false(r.client_ok);
    assert_int_not_equal(r.client_verify, X509_V_OK);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

static void test_wrong_name_fails(void **state)
{
    (void)state;
    SSL_CTX *sctx = s_server(NULL, 0), *cctx = s_client(tlsfx_path("ca.crt"), NULL, NULL);
    s_result_t r = s_handshake(sctx, cctx, "other.test");
    assert_false(r.client_ok);
    assert_int_equal(r.client_verify, X509_V_ERR_HOSTNAME_MISMATCH);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

static void test_tls12_client_refused(void **state)
{
    (void)state;
    SSL_CTX *sctx = s_server(NULL, 0);
    SSL_CTX *old = SSL_CTX_new(TLS_client_method());
    assert_non_null(old);
    SSL_CTX_set_max_proto_version(old, TLS1_2_VERSION);
    SSL_CTX_set_verify(old, SSL_VERIFY_NONE, NULL);
    s_result_t r = s_handshake(sctx, old, NULL);
    assert_false(r.client_ok);
    assert_false(r.server_ok);
    SSL_CTX_free(sctx);
    SSL_CTX_free(old);
}

static void test_client_certificates(void **state)
{
    (void)state;
    const char *ca = tlsfx_path("ca.crt");
    SSL_CTX *required = s_server(ca, 1), *optional = s_server(ca, 0);
    SSL_CTX *anon = s_client(ca, NULL, NULL);
    SSL_CTX *with = s_client(ca, tlsfx_path("cli.crt"), tlsfx_path("cli.key"));
    /* A certificate from an unrelated CA: the edge must refuse it even when
     * certificates are optional, since one was presented. */
    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout rogue.key -out rogue.crt -subj /CN=mallory -days 2");
    assert_int_equal(tlsfx_sh(cmd), 0);
    SSL_CTX *rogue = s_client(ca, tlsfx_path("rogue.crt"), tlsfx_path("rogue.key"));

    assert_false(s_handshake(required, anon, "edge.test").server_ok);
    assert_true(s_handshake(required, with, "edge.test").server_ok);
    assert_false(s_handshake(required, rogue, "edge.test").server_ok);
    assert_true(s_handshake(optional, anon, "edge.test").server_ok);
    assert_true(s_handshake(optional, with, "edge.test").server_ok);
    assert_false(s_handshake(optional, rogue, "edge.test").server_ok);

    SSL_CTX_free(required);
    SSL_CTX_free(optional);
    SSL_CTX_free(anon);
    SSL_CTX_free(with);
    SSL_CTX_free(rogue);
}

static void test_bad_files(void **state)
{
    (void)state;
    char err[512];
    err[0] = '\0';
    /* The key of another certificate. */
    assert_null(rb_tls_server_ctx(tlsfx_path("srv.crt"), tlsfx_path("stray.key"), NULL, 0, err, sizeof err));
    /* OpenSSL already refuses the key when it is loaded. */
    assert_non_null(strstr(err, "stray.key"));
    assert_non_null(strstr(err, "mismatch"));
    err[0] = '\0';
    assert_null(rb_tls_server_ctx(tlsfx_path("nope.crt"), tlsfx_path("srv.key"), NULL, 0, err, sizeof err));
    assert_non_null(strstr(err, "nope.crt"));
    err[0] = '\0';
    assert_null(rb_tls_server_ctx(tlsfx_path("srv.crt"), tlsfx_path("srv.key"), tlsfx_path("nope.crt"), 0, err,
                                  sizeof err));
    assert_non_null(strstr(err, "nope.crt"));
    err[0] = '\0';
    assert_null(rb_tls_server_ctx(tlsfx_path("srv.crt"), tlsfx_path("srv.key"), NULL, 1, err, sizeof err));
    assert_true(err[0] != '\0');
    err[0] = '\0';
    assert_null(rb_tls_client_ctx(tlsfx_path("nope.crt"), NULL, NULL, err, sizeof err));
    assert_non_null(strstr(err, "nope.crt"));
    err[0] = '\0';
    assert_null(rb_tls_client_ctx(tlsfx_path("ca.crt"), tlsfx_path("cli.crt"), NULL, err, sizeof err));
    assert_true(err[0] != '\0');
    err[0] = '\0';
    assert_null(rb_tls_client_ctx(tlsfx_path("ca.crt"), tlsfx_path("cli.crt"), tlsfx_path("stray.key"), err,
                                  sizeof err));
    assert_true(err[0] != '\0');
    assert_null(rb_tls_client_ctx(NULL, NULL, NULL, NULL, 0));
}

static void test_error_text(void **state)
{
    (void)state;
    char buf[512];
    ERR_clear_error();
    assert_string_equal(rb_tls_error(buf, sizeof buf), "no OpenSSL error recorded");
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    assert_int_equal(SSL_CTX_use_certificate_chain_file(ctx, tlsfx_path("nope.crt")), 0);
    const char *t = rb_tls_error(buf, sizeof buf);
    assert_ptr_equal(t, buf);
    assert_true(strlen(t) > 0);
    assert_non_null(strstr(t, "error:"));
    /* The queue is drained. */
    assert_int_equal(ERR_peek_error(), 0);
    /* A tiny buffer is still terminated. */
    assert_int_equal(SSL_CTX_use_certificate_chain_file(ctx, tlsfx_path("nope.crt")), 0);
    char small[8];
    rb_tls_error(small, sizeof small);
    assert_true(strlen(small) < sizeof small);
    SSL_CTX_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_tls13),
        cmocka_unit_test(test_other_ca_fails),
        cmocka_unit_test(test_wrong_name_fails),
        cmocka_unit_test(test_tls12_client_refused),
        cmocka_unit_test(test_client_certificates),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_error_text),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
