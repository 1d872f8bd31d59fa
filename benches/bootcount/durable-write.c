/*
 * The cost of writing the boot counter durably, four ways (benches/bootcount/run runs it on a
 * fresh loop-mounted ext4 in a private mount namespace):
 *
 *   rename   write bootcount.tmp, fsync it, rename it over bootcount, fsync the directory
 *            (two journal commits): what bootcount::increment did for every count
 *   create   the first count after mark-good (which removes the file): create bootcount
 *            (O_EXCL), write, fsync it, fsync the directory (one journal commit, one flush);
 *            the file is removed again (untimed) before the next round
 * Before each write the program sleeps 20 ms (untimed) so that the file's mtime changes with
 * every write, as it does at boot.
 *
 *   fsync    overwrite a preallocated fixed-size file in place (pwrite at 0), fsync
 *   fdatasync  the same with fdatasync: no inode update to commit when only the data changed
 *            (size and blocks unchanged; mtime is not what fdatasync waits for)
 *   sfr      the same with sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER): NOT durable (no
 *            device cache flush, no metadata), shown only as the lower bound
 *
 * Usage: durable-write DIR ROUNDS   prints "METHOD median_us min_us max_us" per method.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    int dir = open(argv[1], O_RDONLY | O_DIRECTORY);
    int rounds = atoi(argv[2]);
    if (dir < 0 || rounds < 1)
        die(argv[1]);
    double *t = calloc(rounds, sizeof *t);
    const char *methods[] = {"rename", "fsync", "fdatasync", "sfr", "create"};
    char buf[32];
    for (int m = 0; m < 5; m++) {
        /* The preallocated file: exists with its final size before the first round. */
        int f = openat(dir, "bootcount", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (f < 0 || write(f, "attempts=0000000000\n", 20) != 20 || fsync(f) || fsync(dir))
            die("prepare");
        close(f);
        for (int i = 0; i < rounds; i++) {
            snprintf(buf, sizeof buf, "attempts=%010d\n", i + 1);
            /* Untimed: let the kernel's coarse clock tick, so that every write changes the
             * file's mtime, as the one write of a boot does (a boot is seconds after the last). */
            usleep(20000);
            if (m == 4 && (unlinkat(dir, "bootcount", 0) || fsync(dir)))
                die("unlink");
            double start = now_us();
            if (m == 4) {
                int c = openat(dir, "bootcount", O_WRONLY | O_CREAT | O_EXCL, 0644);
                if (c < 0 || write(c, buf, 20) != 20 || fsync(c) || fsync(dir))
                    die("create");
                close(c);
            } else if (m == 0) {
                int tmp = openat(dir, "bootcount.tmp", O_WRONLY | O_CREAT | O_TRUNC, 0644);
                if (tmp < 0 || write(tmp, buf, 20) != 20 || fsync(tmp))
                    die("tmp");
                close(tmp);
                if (renameat(dir, "bootcount.tmp", dir, "bootcount") || fsync(dir))
                    die("rename");
            } else {
                int c = openat(dir, "bootcount", O_WRONLY);
                if (c < 0 || pwrite(c, buf, 20, 0) != 20)
                    die("pwrite");
                int r = m == 1   ? fsync(c)
                        : m == 2 ? fdatasync(c)
                                 : sync_file_range(c, 0, 20,
                                                   SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                                       SYNC_FILE_RANGE_WAIT_AFTER);
                if (r)
                    die(methods[m]);
                close(c);
            }
            t[i] = now_us() - start;
        }
        qsort(t, rounds, sizeof *t, cmp);
        printf("%s %.0f %.0f %.0f\n", methods[m], t[rounds / 2], t[0], t[rounds - 1]);
    }
    return 0;
}
