/*
 * outfile.c: output files (see outfile.h): the refusal of outputs that are
 * inputs, temporary file + fsync + rename, direct writes to devices and
 * FIFOs, the registry of live temporary files that the signal handler and
 * exit() clean up, and the removal of stale temporary files of dead
 * processes. Only outfile.h's users see it.
 *
 * The stream handed out is a cookie stream over the file descriptor, so the
 * errno of the first failed write(2) is kept and every error message can
 * name it ("writing out.gguf: No space left on device"), however much
 * stdio buffering lies between the write and its check.
 */
#include "util/outfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LIVE_MAX  32
#define LIVE_PATH 4352

struct moeq_outfile {
    char  *path;    /* as given, for messages */
    char  *target;  /* the name renamed over (path, or a symlink's target) */
    char  *tmp;     /* temporary file; NULL when writing straight to a device/FIFO */
    int    fd;
    FILE  *fp;
    int    err_no;  /* errno of the first failed write */
    int    slot;    /* registry slot of tmp, -1 when none */
};

/* ------------------------------------------------ live temporary files */

static char            live_path[LIVE_MAX][LIVE_PATH];
static atomic_int      live_used[LIVE_MAX];
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t  live_once = PTHREAD_ONCE_INIT;

void moeq_outfile_unlink_all(void)
{
    for (int i = 0; i < LIVE_MAX; i++)
        if (atomic_load(&live_used[i])) unlink(live_path[i]);
}

static void on_signal(int sig)
{
    int saved = errno;
    moeq_outfile_unlink_all();
    errno = saved;
    /* SA_RESETHAND restored the default action; the signal is blocked
     * until this handler returns, then ends the process as it would have. */
    raise(sig);
}

static void at_exit(void) { moeq_outfile_unlink_all(); }

static void install_cleanup(void)
{
    static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction old;
        /* a command's own handler (or an ignored signal) is left alone */
        if (sigaction(sigs[i], NULL, &old) != 0 || (old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL)
            continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESETHAND;
        sigaction(sigs[i], &sa, NULL);
    }
    /* past RLIMIT_FSIZE a write then fails with EFBIG (an error message and
     * cleanup) instead of the process dying with its temporary file */
    struct sigaction old;
    if (sigaction(SIGXFSZ, NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_DFL)
        signal(SIGXFSZ, SIG_IGN);
    atexit(at_exit);
}

static int live_add(const char *tmp)
{
    if (strlen(tmp) >= LIVE_PATH) return -1;
    pthread_mutex_lock(&live_mu);
    int slot = -1;
    for (int i = 0; i < LIVE_MAX && slot < 0; i++)
        if (!atomic_load(&live_used[i])) slot = i;
    if (slot >= 0) {
        memcpy(live_path[slot], tmp, strlen(tmp) + 1);
        atomic_store(&live_used[slot], 1);
    }
    pthread_mutex_unlock(&live_mu);
    return slot;
}

static void live_remove(int slot)
{
    if (slot < 0) return;
    pthread_mutex_lock(&live_mu);
    atomic_store(&live_used[slot], 0);
    pthread_mutex_unlock(&live_mu);
}

/* ----------------------------------------------------------- checking */

int moeq_outfile_check(const char *path, const char *const *inputs, int n_inputs,
                       char *err, size_t errlen)
{
    struct stat o;
    if (stat(path, &o) != 0) {
        if (errno == ENOENT) return 0; /* nothing there yet: no input either */
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    const char *what = S_ISDIR(o.st_mode) ? "a directory" : S_ISSOCK(o.st_mode) ? "a socket"
                     : S_ISBLK(o.st_mode) ? "a block device" : NULL;
    if (what) {
        snprintf(err, errlen, "%s: is %s; refusing to write to it", path, what);
        return -1;
    }
    if (!S_ISREG(o.st_mode)) return 0; /* a device or FIFO is written to, never replaced */
    for (int i = 0; i < n_inputs; i++) {
        struct stat in;
        if (!inputs[i] || stat(inputs[i], &in) != 0) continue;
        if (in.st_dev == o.st_dev && in.st_ino == o.st_ino) {
            if (!strcmp(path, inputs[i]))
                snprintf(err, errlen, "%s: refusing to overwrite the input file", path);
            else
                snprintf(err, errlen, "%s: refusing to overwrite the input file %s (the same file)", path, inputs[i]);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ writing */

static ssize_t cookie_write(void *c, const char *buf, size_t n)
{
    moeq_outfile *o = c;
    size_t done = 0;
    while (!o->err_no && done < n) {
        ssize_t r = write(o->fd, buf + done, n - done);
        if (r > 0) done += (size_t)r;
        else if (r == 0) o->err_no = EIO;
        else if (errno != EINTR) o->err_no = errno;
    }
    if (o->err_no) errno = o->err_no;
    return (ssize_t)done; /* short: stdio marks the stream failed */
}

/* Remove dir/.BASE.tmp.PID.XXXXXX left by processes that no longer exist. */
static void remove_stale(const char *dir, const char *base)
{
    DIR *d = opendir(dir);
    if (!d) return;
    size_t bl = strlen(base);
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (n[0] != '.' || strncmp(n + 1, base, bl) != 0 || strncmp(n + 1 + bl, ".tmp.", 5) != 0) continue;
        const char *p = n + 1 + bl + 5, *q = p;
        while (*q >= '0' && *q <= '9') q++;
        if (q == p || q - p > 9 || *q != '.' || strlen(q + 1) != 6) continue;
        long pid = strtol(p, NULL, 10);
        if (pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to judge */
        struct stat st;
        if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
            unlinkat(dirfd(d), n, 0);
    }
    closedir(d);
}

static void outfile_free(moeq_outfile *o)
{
    free(o->path);
    free(o->target);
    free(o->tmp);
    free(o);
}

static FILE *wrap_fd(moeq_outfile *o)
{
    cookie_io_functions_t io = { .read = NULL, .write = cookie_write, .seek = NULL, .close = NULL };
    FILE *fp = fopencookie(o, "w", io);
    if (fp) setvbuf(fp, NULL, _IOFBF, 1 << 20);
    return fp;
}

moeq_outfile *moeq_outfile_open(const char *path, const char *const *inputs, int n_inputs,
                                char *err, size_t errlen)
{
    if (moeq_outfile_check(path, inputs, n_inputs, err, errlen) != 0) return NULL;
    pthread_once(&live_once, install_cleanup);
    moeq_outfile *o = calloc(1, sizeof *o);
    if (!o || !(o->path = strdup(path))) {
        free(o);
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    o->fd = -1;
    o->slot = -1;
    struct stat st, lst;
    int exists = stat(path, &st) == 0;
    if (exists && !S_ISREG(st.st_mode)) {
        /* a character device or FIFO: write straight to it */
        o->fd = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
        if (o->fd < 0) {
            snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
            outfile_free(o);
            return NULL;
        }
    } else {
        if (exists && lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode)) o->target = realpath(path, NULL);
        if (!o->target) o->target = strdup(path);
        const char *slash = o->target ? strrchr(o->target, '/') : NULL;
        const char *base = slash ? slash + 1 : o->target;
        char dir[LIVE_PATH];
        size_t dl = slash ? (size_t)(slash - o->target) : 0;
        if (!o->target || dl + 1 >= sizeof dir || strlen(o->target) + 32 >= LIVE_PATH) {
            snprintf(err, errlen, "%s: %s", path, o->target ? "path too long" : "out of memory");
            outfile_free(o);
            return NULL;
        }
        if (slash) snprintf(dir, sizeof dir, "%.*s", dl ? (int)dl : 1, dl ? o->target : "/");
        else snprintf(dir, sizeof dir, ".");
        remove_stale(dir, base);
        o->tmp = malloc(LIVE_PATH);
        if (!o->tmp) {
            snprintf(err, errlen, "%s: out of memory", path);
            outfile_free(o);
            return NULL;
        }
        snprintf(o->tmp, LIVE_PATH, "%.*s.%s.tmp.%ld.XXXXXX", slash ? (int)(dl + 1) : 0, o->target, base,
                 (long)getpid());
        /* no signal between creating the file and registering it */
        sigset_t block, old;
        sigemptyset(&block);
        sigaddset(&block, SIGINT);
        sigaddset(&block, SIGTERM);
        sigaddset(&block, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &block, &old);
        o->fd = mkostemp(o->tmp, O_CLOEXEC);
        int e = errno;
        if (o->fd >= 0) o->slot = live_add(o->tmp);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (o->fd < 0) {
            snprintf(err, errlen, "%s: cannot create a temporary file in %s: %s", path, dir, strerror(e));
            outfile_free(o);
            return NULL;
        }
        if (o->slot < 0) {
            snprintf(err, errlen, "%s: too many output files open at once", path);
            moeq_outfile_abort(o);
            return NULL;
        }
        /* mkstemp makes the file 0600: keep the replaced file's mode, else
         * the usual one */
        mode_t mode;
        if (exists) {
            mode = st.st_mode & 07777;
        } else {
            mode_t um = umask(0);
            umask(um);
            mode = 0666 & ~um;
        }
        (void)fchmod(o->fd, mode); /* not fatal: the data is what matters */
    }
    o->fp = wrap_fd(o);
    if (!o->fp) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        moeq_outfile_abort(o);
        return NULL;
    }
    return o;
}

FILE *moeq_outfile_fp(const moeq_outfile *o) { return o ? o->fp : NULL; }

int moeq_outfile_failed(const moeq_outfile *o, char *err, size_t errlen)
{
    if (!o->err_no && !ferror(o->fp)) return 0;
    snprintf(err, errlen, "writing %s: %s", o->path, strerror(o->err_no ? o->err_no : EIO));
    return -1;
}

void moeq_outfile_abort(moeq_outfile *o)
{
    if (!o) return;
    if (o->fp) {
        o->err_no = o->err_no ? o->err_no : ECANCELED; /* fclose flushes: write nothing more */
        fclose(o->fp);
    }
    if (o->fd >= 0) close(o->fd);
    if (o->tmp && o->slot >= 0) unlink(o->tmp);
    live_remove(o->slot);
    outfile_free(o);
}

int moeq_outfile_commit(moeq_outfile *o, char *err, size_t errlen)
{
    if (!o) return -1;
    const char *step = "writing";
    int e = 0;
    if (fflush(o->fp) != 0 || o->err_no || ferror(o->fp)) e = o->err_no ? o->err_no : errno ? errno : EIO;
    if (!e && o->tmp && fsync(o->fd) != 0) e = errno;
    FILE *fp = o->fp;
    o->fp = NULL;
    if (e) o->err_no = e;
    fclose(fp); /* closes only the cookie; the descriptor is ours */
    if (close(o->fd) != 0 && !e) e = errno;
    o->fd = -1;
    if (!e && o->tmp && rename(o->tmp, o->target) != 0) {
        e = errno;
        step = "renaming the temporary file to";
    }
    if (e) {
        snprintf(err, errlen, "%s %s: %s", step, o->path, strerror(e));
        moeq_outfile_abort(o);
        return -1;
    }
    if (o->tmp) {
        live_remove(o->slot);
        o->slot = -1;
        /* make the rename itself durable */
        const char *slash = strrchr(o->target, '/');
        char dir[LIVE_PATH];
        snprintf(dir, sizeof dir, "%.*s", slash ? (slash == o->target ? 1 : (int)(slash - o->target)) : 1,
                 slash ? o->target : ".");
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) { (void)fsync(dfd); close(dfd); }
    }
    outfile_free(o);
    return 0;
}
