/*
 * The floor of qemu/bench-boot: a /init that makes only the system calls overlay-init's
 * job needs for one boot, with no checks, no logging beyond its timing marks, and no
 * fallbacks. Whatever overlay-init takes beyond this is its own cost.
 *
 * Same work as overlay-init (the benchmark checks it after every boot: the same modules in
 * /proc/modules, the same mounts at /, /rom and /overlay with the same options):
 *   - /proc, /sys, /dev (devtmpfs), /run with overlay-init's flags (an already-mounted /dev
 *     is left as it is);
 *   - every module of /lib/modules/overlay-init.index, in its order, one finit_module each
 *     (the benchmark builds the index with exactly the modules overlay-init loads);
 *   - waits for root= (and the ovl.upper= device) by polling stat() every millisecond;
 *   - the lower read-only at /rom (rootfstype=, default squashfs), the upper at /overlay (a
 *     tmpfs, or the ovl.upper= device as ext4), upper/ and work/ in it, the overlay at
 *     /sysroot with overlay-init's options;
 *   - with a persistent upper, the boot counter written durably: one write and fdatasync of
 *     /overlay/.overlay-init/bootcount (the cheapest durable write; overlay-init does more);
 *   - /rom and /overlay moved into /sysroot, then /run /dev /sys /proc;
 *   - the initramfs deleted (not crossing into other mounts), /sysroot moved onto /, chroot,
 *     exec of init= with the arguments the kernel gave this init.
 *
 * Marks: "floorinit: STEP" to /dev/kmsg after each step (open, write, close); the benchmark
 * takes the kernel's printk timestamp of each. The last one ("handover") carries VmHWM.
 *
 * Build: musl-gcc -static -Os -s (benches/boot/build-bench-initramfs).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Where /dev/kmsg is: it moves into /sysroot with /dev, then back to /dev after the chroot.
 * Each mark opens it anew, as the script's `echo >/dev/kmsg` does: the kernel rate-limits
 * each opener of /dev/kmsg to 10 lines, and an ext4 boot makes 11 marks. */
static const char *kmsg_path = "/dev/kmsg";

static void mark(const char *step, const char *extra)
{
    char line[256];
    int n = snprintf(line, sizeof line, "floorinit: %s%s%s\n", step, extra ? " " : "",
                     extra ? extra : "");
    int kmsg = open(kmsg_path, O_WRONLY | O_CLOEXEC);
    if (kmsg >= 0) {
        write(kmsg, line, n);
        close(kmsg);
    }
}

static void fail(const char *what)
{
    char line[256];
    int n = snprintf(line, sizeof line, "floorinit: FAILED: %s: %s\n", what, strerror(errno));
    write(2, line, n);
    int kmsg = open(kmsg_path, O_WRONLY | O_CLOEXEC);
    if (kmsg >= 0)
        write(kmsg, line, n);
    sync();
    reboot(RB_POWER_OFF);
    for (;;)
        pause();
}

static void do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                     const char *data)
{
    if (mount(src, dst, type, flags, data) != 0)
        fail(dst);
}

static void move(const char *src, const char *dst)
{
    mkdir(dst, 0755);
    if (mount(src, dst, NULL, MS_MOVE, NULL) != 0)
        fail(dst);
}

/* Deletes what is in the directory fd (closes it), staying on device dev. */
static void wipe(int fd, dev_t dev)
{
    DIR *d = fdopendir(fd);
    struct dirent *e;
    if (!d)
        return;
    while ((e = readdir(d))) {
        struct stat st;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_dev != dev)
            continue;
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(fd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0)
                wipe(sub, dev);
            unlinkat(fd, e->d_name, AT_REMOVEDIR);
        } else {
            unlinkat(fd, e->d_name, 0);
        }
    }
    closedir(d);
}

static const char *param(const char *cmdline, const char *name, char *buf, size_t len)
{
    size_t n = strlen(name);
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ' || *p == '\n')
            p++;
        const char *end = p;
        while (*end && *end != ' ' && *end != '\n')
            end++;
        if ((size_t)(end - p) > n && !strncmp(p, name, n) && (size_t)(end - p - n) < len) {
            memcpy(buf, p + n, end - p - n);
            buf[end - p - n] = 0;
            return buf;
        }
        p = end;
    }
    return NULL;
}

static void wait_for(const char *dev)
{
    struct stat st;
    struct timespec ms = {0, 1000000};
    for (int i = 0; stat(dev, &st) != 0; i++) {
        if (i > 30000)
            fail(dev);
        nanosleep(&ms, NULL);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    do_mount("proc", "/proc", "proc", MS_NODEV | MS_NOEXEC | MS_NOSUID, "");
    do_mount("sysfs", "/sys", "sysfs", MS_NODEV | MS_NOEXEC | MS_NOSUID, "");
    mkdir("/dev", 0755);
    if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") != 0 && errno != EBUSY)
        fail("/dev");
    mkdir("/run", 0755);
    do_mount("tmpfs", "/run", "tmpfs", MS_NODEV | MS_NOSUID, "mode=0755");
    mark("api-mounts", NULL);

    static char cmdline[4096];
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof cmdline - 1) : -1;
    if (n < 0)
        fail("/proc/cmdline");
    cmdline[n] = 0;
    close(fd);
    char root[256], fstype[64], upper[256], init[256];
    if (!param(cmdline, "root=", root, sizeof root))
        fail("root=");
    if (!param(cmdline, "rootfstype=", fstype, sizeof fstype))
        strcpy(fstype, "squashfs");
    if (!param(cmdline, "ovl.upper=", upper, sizeof upper) || !strcmp(upper, "tmpfs"))
        upper[0] = 0;
    if (!param(cmdline, "init=", init, sizeof init))
        strcpy(init, "/sbin/init");

    /* The index: "NAME FILE [DEPS...]" lines, in load order; "#" comments. */
    static char index[16384];
    fd = open("/lib/modules/overlay-init.index", O_RDONLY | O_CLOEXEC);
    n = fd >= 0 ? read(fd, index, sizeof index - 1) : -1;
    if (n < 0)
        fail("/lib/modules/overlay-init.index");
    index[n] = 0;
    close(fd);
    for (char *line = strtok(index, "\n"); line; line = strtok(NULL, "\n")) {
        char name[128], file[256], path[300];
        if (line[0] == '#' || sscanf(line, "%127s %255s", name, file) != 2)
            continue;
        snprintf(path, sizeof path, "/lib/modules/%s", file);
        int m = open(path, O_RDONLY | O_CLOEXEC);
        if (m < 0 || syscall(SYS_finit_module, m, "", 0) != 0)
            fail(path);
        close(m);
    }
    mark("modules", NULL);

    wait_for(root);
    if (upper[0])
        wait_for(upper);
    mark("device-wait", NULL);

    mkdir("/rom", 0755);
    mkdir("/overlay", 0755);
    mkdir("/sysroot", 0755);
    do_mount(root, "/rom", fstype, MS_RDONLY | MS_NODEV, "");
    mark("lower", NULL);

    if (upper[0])
        do_mount(upper, "/overlay", "ext4", MS_NODEV, "");
    else
        do_mount("tmpfs", "/overlay", "tmpfs", MS_NODEV | MS_NOSUID, "mode=0755,size=50%");
    mkdir("/overlay/upper", 0755);
    mkdir("/overlay/work", 0755);
    mark("upper", NULL);

    if (upper[0]) {
        mkdir("/overlay/.overlay-init", 0700);
        int c = open("/overlay/.overlay-init/bootcount", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (c < 0 || pwrite(c, "attempts=1\n", 11, 0) != 11 || fdatasync(c) != 0)
            fail("bootcount");
        close(c);
        mark("record-boot", NULL);
    }

    do_mount("overlay", "/sysroot", "overlay", 0,
             "lowerdir=/rom,upperdir=/overlay/upper,workdir=/overlay/work");
    mark("overlay", NULL);

    move("/rom", "/sysroot/rom");
    move("/overlay", "/sysroot/overlay");
    mark("move-layers", NULL);

    move("/run", "/sysroot/run");
    move("/dev", "/sysroot/dev");
    move("/sys", "/sysroot/sys");
    move("/proc", "/sysroot/proc");
    kmsg_path = "/sysroot/dev/kmsg";
    mark("move-api-mounts", NULL);

    struct stat rootst;
    int rootfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0 || fstat(rootfd, &rootst) != 0)
        fail("/");
    wipe(rootfd, rootst.st_dev);
    mark("free-initramfs", NULL);

    if (chdir("/sysroot") != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 ||
        chdir("/") != 0)
        fail("switch root");
    kmsg_path = "/dev/kmsg";

    char hwm[64] = "";
    fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        static char status[4096];
        n = read(fd, status, sizeof status - 1);
        close(fd);
        status[n > 0 ? n : 0] = 0;
        char *p = strstr(status, "VmHWM:");
        long kb;
        if (p && sscanf(p + 6, "%ld", &kb) == 1)
            snprintf(hwm, sizeof hwm, "VmHWM=%ldkB", kb);
    }
    mark("handover", hwm);
    argv[0] = init;
    execv(init, argv);
    fail(init);
    return 1;
}
