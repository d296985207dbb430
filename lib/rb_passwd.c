/* rb_passwd: scrypt password hashes through OpenSSL's KDF, in the text form
 * described in rb_passwd.h. Entries come from operators' files, so a bad
 * one is an error (-1), never a crash; costs are range-checked before any
 * work so that a mistyped entry cannot ask for unbounded memory or time. */
#include "rb_passwd.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define SALT_LEN 16
#define KEY_LEN 32
#define LN_MIN 1
#define LN_MAX 20
#define R_MAX 32
#define P_MAX 16

/* Each parameter alone in range is not enough: ln=20, r=32 takes 4 GiB
 * for every check, and p multiplies the time. */
#define MEM_MAX ((uint64_t)1 << 30)  /* 128 * r * N: ln=20, r=8 at most */
#define WORK_MAX ((uint64_t)1 << 24) /* r * p * N: twice ln=20, r=8, p=1 */

/* RFC 7914 requires N < 2^(128 * r / 8); OpenSSL refuses the rest, so
 * refuse it here with the other range checks. */
bool rb_passwd_cost_ok(unsigned ln, unsigned r, unsigned p)
{
    if (ln < LN_MIN || ln > LN_MAX || r < 1 || r > R_MAX || p < 1 || p > P_MAX || ln >= 16 * r)
        return false;
    uint64_t n = (uint64_t)1 << ln;
    return 128 * r * n <= MEM_MAX && (uint64_t)r * p * n <= WORK_MAX;
}

static int s_scrypt(const char *password, const uint8_t *salt, size_t saltlen, unsigned ln,
                    unsigned r, unsigned p, uint8_t key[KEY_LEN])
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "SCRYPT", NULL);
    if (!kdf) return -1;
    EVP_KDF_CTX *kctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (!kctx) return -1;

    uint64_t n = (uint64_t)1 << ln;
    uint32_t r32 = r, p32 = p;
    /* OpenSSL's default limit (32 MiB) is below what ln=20, r=8 needs
     * (1 GiB); allow exactly what this cost takes, as OpenSSL counts it:
     * 128 * r * (N + 2) for V plus 128 * r * p for B. */
    uint64_t maxmem = (uint64_t)128 * r * (n + 2) + (uint64_t)128 * r * p;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, (void *)password,
                                          strlen(password)),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen),
        OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n),
        OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r32),
        OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &p32),
        OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem),
        OSSL_PARAM_construct_end(),
    };
    int rc = EVP_KDF_derive(kctx, key, KEY_LEN, params) == 1 ? 0 : -1;
    EVP_KDF_CTX_free(kctx);
    return rc;
}

/* Standard base64 with '=' padding and no newlines. Returns the length. */
static int s_b64_encode(char *dst, const uint8_t *src, size_t n)
{
    return EVP_EncodeBlock((unsigned char *)dst, src, (int)n);
}

/* Decodes exactly want bytes from a base64 text of length n, or -1.
 * EVP_DecodeBlock counts padding as zero bytes, so the length is checked
 * against what the padding says. */
static int s_b64_decode(uint8_t *dst, size_t want, const char *src, size_t n)
{
    if (n == 0 || n % 4 != 0 || n / 4 * 3 > 64) return -1;
    for (size_t i = 0; i < n; i++) {
        char ch = src[i];
        bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '+' || ch == '/' ||
                  (ch == '=' && i >= n - 2 && (i == n - 1 || src[n - 1] == '='));
        if (!ok) return -1;
    }
    size_t pad = (src[n - 1] == '=') + (src[n - 2] == '=');
    uint8_t tmp[64];
    int got = EVP_DecodeBlock(tmp, (const unsigned char *)src, (int)n);
    if (got < 0 || (size_t)got - pad != want) {
        OPENSSL_cleanse(tmp, sizeof tmp);
        return -1;
    }
    memcpy(dst, tmp, want);
    OPENSSL_cleanse(tmp, sizeof tmp);
    return 0;
}

int rb_passwd_hash(const char *password, unsigned ln, unsigned r, unsigned p,
                   char out[RB_PASSWD_MAX])
{
    if (!password || !rb_passwd_cost_ok(ln, r, p)) return -1;
    uint8_t salt[SALT_LEN], key[KEY_LEN];
    if (RAND_bytes(salt, sizeof salt) != 1) return -1;
    if (s_scrypt(password, salt, sizeof salt, ln, r, p, key) != 0) {
        OPENSSL_cleanse(key, sizeof key);
        return -1;
    }
    char salt64[4 * ((SALT_LEN + 2) / 3) + 1], key64[4 * ((KEY_LEN + 2) / 3) + 1];
    s_b64_encode(salt64, salt, sizeof salt);
    s_b64_encode(key64, key, sizeof key);
    OPENSSL_cleanse(key, sizeof key);
    int n = snprintf(out, RB_PASSWD_MAX, "$scrypt$ln=%u,r=%u,p=%u$%s$%s", ln, r, p, salt64,
                     key64);
    OPENSSL_cleanse(key64, sizeof key64);
    return n > 0 && n < RB_PASSWD_MAX ? 0 : -1;
}

/* Reads a decimal number of at most 3 digits without a leading zero, the
 * way this module writes them, and moves *s past it. */
static int s_read_uint(const char **s, unsigned *v)
{
    const char *q = *s;
    unsigned x = 0;
    int digits = 0;
    while (*q >= '0' && *q <= '9') {
        if (digits == 3 || (digits == 1 && x == 0)) return -1;
        x = x * 10 + (unsigned)(*q - '0');
        digits++;
        q++;
    }
    if (digits == 0) return -1;
    *v = x;
    *s = q;
    return 0;
}

static int s_expect(const char **s, const char *lit)
{
    size_t n = strlen(lit);
    if (strncmp(*s, lit, n) != 0) return -1;
    *s += n;
    return 0;
}

int rb_passwd_verify(const char *password, const char *entry)
{
    if (!password || !entry) return -1;
    const char *s = entry;
    unsigned ln, r, p;
    if (s_expect(&s, "$scrypt$ln=") || s_read_uint(&s, &ln) || s_expect(&s, ",r=") ||
        s_read_uint(&s, &r) || s_expect(&s, ",p=") || s_read_uint(&s, &p) || s_expect(&s, "$"))
        return -1;
    if (!rb_passwd_cost_ok(ln, r, p)) return -1;

    const char *salt64 = s;
    const char *dollar = strchr(salt64, '$');
    if (!dollar) return -1;
    const char *key64 = dollar + 1;
    if (strchr(key64, '$')) return -1;

    uint8_t salt[SALT_LEN], want[KEY_LEN], got[KEY_LEN];
    if (s_b64_decode(salt, sizeof salt, salt64, (size_t)(dollar - salt64)) != 0) return -1;
    if (s_b64_decode(want, sizeof want, key64, strlen(key64)) != 0) return -1;

    int rc = -1;
    if (s_scrypt(password, salt, sizeof salt, ln, r, p, got) == 0)
        rc = CRYPTO_memcmp(got, want, KEY_LEN) == 0 ? 1 : 0;
    OPENSSL_cleanse(got, sizeof got);
    OPENSSL_cleanse(want, sizeof want);
    return rc;
}
