/* Replay driver for fuzz targets: runs every regular file of a directory
 * (a seed corpus) through LLVMFuzzerTestOneInput once, so that ctest keeps
 * each parser's fuzz target building and its seeds passing without
 * libFuzzer. A crash fails the test the usual way. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a whole file; *len is its size. NULL on error. */
static uint8_t *s_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 4096;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    DIR *d = opendir(argv[1]);
    if (!d) {
        perror(argv[1]);
        return 1;
    }
    unsigned ran = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        size_t len = 0;
        uint8_t *buf = s_read_file(path, &len);
        if (!buf) {
            perror(path);
            rc = 1;
            continue;
        }
        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
        ran++;
    }
    closedir(d);
    printf("ran %u input(s) from %s\n", ran, argv[1]);
    if (ran == 0) {
        fprintf(stderr, "%s: no input files\n", argv[1]);
        return 1;
    }
    return rc;
}
