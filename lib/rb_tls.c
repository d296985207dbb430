/* rb_tls: the OpenSSL contexts of the tunnel. TLS 1.3 only: the tunnel has
 * no legacy peers, and 1.3 removes renegotiation, static RSA and the older
 * cipher suites in one step. Contexts are set up for many idle sessions
 * (an edge holds thousands): buffers are released while a connection is
 * idle. */
#include "rb_tls.h"

#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>

const char *rb_tls_error(char *buf, size_t len)
{
    if (!buf || len == 0) return "";
    buf[0] = '\0';
    size_t used = 0;
    unsigned long e;
    /* Drain the whole queue: the first entry is usually the root cause
     * ("no such file"), the last the operation that failed. */
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        ERR_error_string_n(e, one, sizeof one);
        if (used + 1 < len) {
            int n = snprintf(buf + used, len - used, "%s%s", used ? "; " : "", one);
            if (n > 0) used += (size_t)n < len - used ? (size_t)n : len - used - 1;
        }
    }
    if (used == 0) snprintf(buf, len, "no OpenSSL error recorded");
    return buf;
}

static void s_fail(char *err, size_t errlen, const char *what, const char *path)
{
    char ossl[512];
    rb_tls_error(ossl, sizeof ossl);
    if (err && errlen) snprintf(err, errlen, "%s %s: %s", what, path ? path : "", ossl);
}

static SSL_CTX *s_ctx_new(const SSL_METHOD *method, char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (!ctx) {
        s_fail(err, errlen, "SSL_CTX_new", NULL);
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1) {
        s_fail(err, errlen, "cannot require TLS 1.3", NULL);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* Read several records per read(2) (a bulk stream's records arrive back
     * to back); the buffer is still released whenever it runs empty. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 4 * (SSL3_RT_MAX_PLAIN_LENGTH + 256));
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    return ctx;
}

/* Loads a certificate chain and its key, and checks that they belong
 * together, so a mismatched pair fails at start and not at first logon. */
static int s_load_pair(SSL_CTX *ctx, const char *cert, const char *key, char *err,
                       size_t errlen)
{
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        s_fail(err, errlen, "cannot load certificate", cert);
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        s_fail(err, errlen, "cannot load key", key);
        return -1;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        s_fail(err, errlen, "key does not match certificate", key);
        return -1;
    }
    return 0;
}

SSL_CTX *rb_tls_server_ctx(const char *cert, const char *key, const char *client_ca,
                           int require_client_cert, char *err, size_t errlen)
{
    if (!cert || !key) {
        if (err && errlen) snprintf(err, errlen, "server certificate and key are required");
        return NULL;
    }
    SSL_CTX *ctx = s_ctx_new(TLS_server_method(), err, errlen);
    if (!ctx) return NULL;
    /* Sessions are resumed by the tunnel's own resume token, not by TLS
     * tickets; not issuing them saves a message and a key to rotate. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx, 0);
    if (s_load_pair(ctx, cert, key, err, errlen) != 0) goto fail;

    if (client_ca) {
        if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) {
            s_fail(err, errlen, "cannot load client CA", client_ca);
            goto fail;
        }
        /* The CA names sent in the CertificateRequest let the client pick
         * the right certificate. */
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca);
        if (!names) {
            s_fail(err, errlen, "cannot read client CA names", client_ca);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        int mode = SSL_VERIFY_PEER;
        if (require_client_cert) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, mode, NULL);
    } else if (require_client_cert) {
        if (err && errlen) snprintf(err, errlen, "client certificates required but no client CA");
        goto fail;
    }
    return ctx;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *rb_tls_client_ctx(const char *ca, const char *cert, const char *key, char *err,
                           size_t errlen)
{
    if (!ca) {
        if (err && errlen) snprintf(err, errlen, "a CA file is required to verify the edge");
        return NULL;
    }
    if ((cert == NULL) != (key == NULL)) {
        if (err && errlen) snprintf(err, errlen, "client certificate and key go together");
        return NULL;
    }
    SSL_CTX *ctx = s_ctx_new(TLS_client_method(), err, errlen);
    if (!ctx) return NULL;
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        s_fail(err, errlen, "cannot load CA", ca);
        goto fail;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (cert && s_load_pair(ctx, cert, key, err, errlen) != 0) goto fail;
    return ctx;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}
