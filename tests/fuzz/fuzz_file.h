/* For fuzz targets whose parser reads a named file: the input goes into an
 * in-memory file (memfd), opened again through /proc/self/fd by name. */
#ifndef FUZZ_FILE_H
#define FUZZ_FILE_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

/* Returns the memfd (close it when done) and its name in path; -1 when the
 * file cannot be made, which is the machine's trouble, not the input's. */
static inline int fuzz_file(const uint8_t *data, size_t size, char *path, size_t pathlen)
{
    int fd = memfd_create("fuzz-input", MFD_CLOEXEC);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < size) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    snprintf(path, pathlen, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
