/* rb_tls: OpenSSL contexts for the tunnel. TLS 1.3 only. */
#ifndef RB_TLS_H
#define RB_TLS_H
#include <openssl/ssl.h>
#include <stddef.h>

/* Server side (edge). client_ca may be NULL; when set, client certificates
 * signed by it are requested and verified when presented (required when
 * require_client_cert). NULL with err set on failure. */
SSL_CTX *rb_tls_server_ctx(const char *cert, const char *key, const char *client_ca,
                           int require_client_cert, char *err, size_t errlen);
/* Client side: verifies the server against ca (and its name when the
 * connection sets one). cert/key may be NULL. NULL with err set. */
SSL_CTX *rb_tls_client_ctx(const char *ca, const char *cert, const char *key, char *err,
                           size_t errlen);
/* The last OpenSSL error as text, for logs. */
const char *rb_tls_error(char *buf, size_t len);

#endif
