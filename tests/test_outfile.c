/*
 * test_outfile.c: data safety of every output (src/util/outfile). Each TEST is
 * one case of the promise in README's "Data safety": an output that is an
 * input of the command (the model, the text or prompt file, an imatrix
 * --in-file, under another spelling) is refused and the input kept byte
 * for byte; a full disk or a file size limit ends with the errno text and
 * no file under the final name; SIGINT/SIGTERM/SIGHUP remove the temporary
 * file; after SIGKILL only a temporary file named after the output remains
 * and the next run removes it; devices, FIFOs and sockets are never
 * replaced. Signals go to writer processes forked here, which say when
 * their temporary file exists (no test waits on time). The whole-binary
 * kill tests are in check-long.
 */
#include "test.h"
#include "gguf/gguf.h"
#include "quant/quants.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *synth_model(const char *name)
{
    const char *p = test_tmp(name);
    char *o = NULL;
    int rc = test_run(&o, "%s synth -o %s", test_moeq_bin(), p);
    REQUIREF(rc == 0, "synth: %s", o);
    free(o);
    return p;
}

static const char *copy_text(const char *name)
{
    const char *p = test_tmp(name);
    REQUIRE(test_run(NULL, "cp data/calibration.txt %s", p) == 0);
    return p;
}

/* Temporary files of output BASE in dir (".BASE.tmp.*"). */
static int count_temps(const char *dir, const char *base)
{
    char pre[512];
    snprintf(pre, sizeof pre, ".%s.tmp.", base);
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, pre, strlen(pre))) n++;
    if (d) closedir(d);
    return n;
}

/* Entries of dir other than . and .. */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    if (d) closedir(d);
    return n;
}

/* A shell command line, formatted (static buffer: one at a time). */
static const char *cmdf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *cmdf(const char *fmt, ...)
{
    static char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return cmd;
}

/* Runs cmd (which must fail with status 1 naming want) and checks that
 * file still has the bytes it had before. */
static void check_refused_and_kept(const char *file, const char *want, const char *cmd)
{
    size_t n0 = 0, n1 = 0;
    char *before = test_read_file(file, &n0);
    REQUIREF(before, "%s: cannot read", file);
    char *o = NULL;
    int rc = test_run(&o, "%s", cmd);
    CHECKF(rc == 1 && o && strstr(o, want) && strstr(o, "refusing to overwrite the input"),
           "%s: exit %d (want 1 and '%s'): %s", cmd, rc, want, o ? o : "");
    free(o);
    char *after = test_read_file(file, &n1);
    CHECKF(after && n1 == n0 && !memcmp(before, after, n0), "%s: %s changed (%zu -> %zu bytes)", cmd, file, n0, n1);
    free(before);
    free(after);
}

TEST(outfile_run_dump_logits_never_overwrites_model_or_prompt)
{
    const char *m = synth_model("model.gguf");
    const char *t = test_tmp("prompt.txt");
    FILE *f = fopen(t, "w");
    REQUIRE(f);
    fputs("The harbour town woke early.", f);
    fclose(f);
    const char *bin = test_moeq_bin();
    check_refused_and_kept(m, "model.gguf", cmdf("%s run -m %s -p hi -n 1 --dump-logits %s", bin, m, m));
    check_refused_and_kept(m, "model.gguf", cmdf("cd %s && %s run -m model.gguf -p hi -n 1 --dump-logits ./model.gguf",
                           test_tmpdir(), bin));
    check_refused_and_kept(t, "prompt.txt", cmdf("%s run -m %s -f %s -n 1 --dump-logits %s", bin, m, t, t));
    /* a symlink to the prompt is the prompt */
    const char *l = test_tmp("link.bin");
    REQUIRE(symlink("prompt.txt", l) == 0);
    check_refused_and_kept(t, "prompt.txt", cmdf("%s run -m %s -f %s -n 1 --dump-logits %s", bin, m, t, l));
    /* a fresh name still works, and no temporary file is left */
    free(test_run_ok("%s run -m %s -f %s -n 0 --dump-logits %s", bin, m, t, test_tmp("logits.bin")));
    struct stat st;
    CHECK(stat(test_tmp("logits.bin"), &st) == 0 && st.st_size > 0 && st.st_size % 4 == 0);
    CHECK(count_temps(test_tmpdir(), "logits.bin") == 0);
}

TEST(outfile_imatrix_never_overwrites_model_or_text)
{
    const char *m = synth_model("model.gguf");
    const char *t = copy_text("calib.txt");
    REQUIRE(mkdir(test_tmp("sub"), 0755) == 0);
    const char *bin = test_moeq_bin();
    check_refused_and_kept(m, "model.gguf", cmdf("%s imatrix -m %s -f %s -c 64 --chunks 1 -o %s", bin, m, t, m));
    check_refused_and_kept(m, "model.gguf", cmdf("%s imatrix -m %s -f %s -c 64 --chunks 1 -o %s/sub/../model.gguf",
                           bin, m, t, test_tmpdir()));
    check_refused_and_kept(t, "calib.txt", cmdf("%s imatrix -m %s -f %s -c 64 --chunks 1 -o %s", bin, m, t, t));
    check_refused_and_kept(t, "calib.txt", cmdf("cd %s/sub && %s imatrix -m ../model.gguf -f ../calib.txt "
                                                "-c 64 --chunks 1 -o ./../calib.txt", test_tmpdir(), bin));
}

TEST(outfile_perplexity_kld_base_never_overwrites_model_or_text)
{
    const char *m = synth_model("model.gguf");
    const char *t = copy_text("calib.txt");
    const char *bin = test_moeq_bin();
    check_refused_and_kept(m, "model.gguf", cmdf("%s perplexity -m %s -f %s -c 64 --chunks 1 --kl-divergence-base %s",
                           bin, m, t, m));
    check_refused_and_kept(t, "calib.txt", cmdf("%s perplexity -m %s -f %s -c 64 --chunks 1 --kl-divergence-base %s",
                           bin, m, t, t));
    const char *hard = test_tmp("hard.txt");
    REQUIRE(link(t, hard) == 0);
    check_refused_and_kept(t, "hard.txt", cmdf("%s perplexity -m %s -f %s -c 64 --chunks 1 --kl-divergence-base %s",
                           bin, m, t, hard));
    /* reading the base (--kl-divergence) is not writing it */
    const char *base = test_tmp("base.kld");
    char *o = NULL;
    int rc = test_run(&o, "%s perplexity -m %s -f %s -c 64 --chunks 2 --kl-divergence-base %s", bin, m, t, base);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    CHECK(count_temps(test_tmpdir(), "base.kld") == 0);
    rc = test_run(&o, "%s perplexity -m %s -f %s --kl-divergence-base %s --kl-divergence", bin, m, t, base);
    CHECKF(rc == 0 && strstr(o, "Mean    KLD:"), "%s", o);
    free(o);
}

TEST(outfile_imatrix_in_file_compared_by_inode)
{
    const char *m = synth_model("model.gguf");
    const char *t = copy_text("calib.txt");
    const char *bin = test_moeq_bin();
    char *o = NULL;
    int rc = test_run(&o, "cd %s && %s imatrix -m model.gguf -f calib.txt -c 64 --chunks 2 -o A.dat",
                      test_tmpdir(), bin);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    const char *a = test_tmp("A.dat");
    check_refused_and_kept(a, "A.dat", cmdf("cd %s && %s imatrix -o ./A.dat --in-file A.dat", test_tmpdir(), bin));
    check_refused_and_kept(a, "A.dat", cmdf("cd %s && %s imatrix -m model.gguf -f calib.txt -c 64 --chunks 1 "
                           "-o %s --in-file A.dat", test_tmpdir(), bin, a));
    REQUIRE(symlink("A.dat", test_tmp("L.dat")) == 0);
    check_refused_and_kept(a, "A.dat", cmdf("cd %s && %s imatrix -o L.dat --in-file A.dat --output-format dat",
                           test_tmpdir(), bin));
    /* quantize's --imatrix is an input too */
    check_refused_and_kept(a, "A.dat", cmdf("cd %s && %s quantize --imatrix A.dat model.gguf ./A.dat Q8_0",
                           test_tmpdir(), bin));
    /* and dump's FILE, through ".." */
    REQUIRE(mkdir(test_tmp("sub"), 0755) == 0);
    check_refused_and_kept(m, "model.gguf", cmdf("cd %s/sub && %s dump ../model.gguf token_embd.weight "
                                                 "-o ../sub/../model.gguf", test_tmpdir(), bin));
    (void)t;
}

/* Mount an 8 MiB tmpfs at dir; 0 when mounted (root), else SKIP. */
static void mount_small_tmpfs(const char *dir)
{
    REQUIRE(mkdir(dir, 0755) == 0);
    if (test_run(NULL, "mount -t tmpfs -o size=8m moeq-test %s", dir) != 0)
        SKIP("cannot mount a tmpfs here (not root?)");
}

static void check_enospc(const char *mnt, const char *out, const char *cmd)
{
    int before = count_entries(mnt);
    char *o = NULL;
    int rc = test_run(&o, "%s", cmd);
    char want[600];
    snprintf(want, sizeof want, "writing %s/%s: No space left on device", mnt, out);
    CHECKF(rc == 1 && o && strstr(o, want), "%s: exit %d, want 1 and '%s': %s", cmd, rc, want, o ? o : "");
    char path[600];
    snprintf(path, sizeof path, "%s/%s", mnt, out);
    CHECKF(access(path, F_OK) != 0, "%s: %s exists after a full disk", cmd, path);
    CHECKF(count_entries(mnt) == before, "%s: %d files in %s, %d before (a temporary file left?)", cmd,
           count_entries(mnt), mnt, before);
    free(o);
}

TEST(outfile_full_disk_leaves_no_file_and_names_the_reason)
{
    const char *m = synth_model("model.gguf");
    const char *t = copy_text("calib.txt");
    REQUIREF(test_run(NULL, "%s imatrix -m %s -f %s -c 64 --chunks 1 -o %s", test_moeq_bin(), m, t,
                      test_tmp("i.dat")) == 0, "imatrix");
    char mnt[512];
    snprintf(mnt, sizeof mnt, "%s", test_tmp("small"));
    mount_small_tmpfs(mnt);
    const char *bin = test_moeq_bin();
    /* 15 MB into 8 MB; no REQUIRE from here until the unmount */
    check_enospc(mnt, "s.gguf", cmdf("%s synth -o %s/s.gguf", bin, mnt));
    /* then fill it, leaving 16 KiB: every output below is larger */
    test_run(NULL, "cat /dev/zero > %s/fill 2>/dev/null; truncate -s -16K %s/fill", mnt, mnt);
    check_enospc(mnt, "q.gguf", cmdf("%s quantize %s %s/q.gguf Q8_0", bin, m, mnt));
    check_enospc(mnt, "i.dat", cmdf("%s imatrix -m %s -f %s -c 64 --chunks 2 -o %s/i.dat", bin, m, t, mnt));
    check_enospc(mnt, "i.gguf", cmdf("%s imatrix --in-file %s -o %s/i.gguf", bin, test_tmp("i.dat"), mnt));
    check_enospc(mnt, "b.kld", cmdf("%s perplexity -m %s -f %s -c 64 --chunks 2 --kl-divergence-base %s/b.kld",
                 bin, m, t, mnt));
    check_enospc(mnt, "l.bin", cmdf("head -c 800 %s > %s/p.txt && %s run -m %s -f %s/p.txt -n 0 --dump-logits %s/l.bin",
                 t, test_tmpdir(), bin, m, test_tmpdir(), mnt));
    check_enospc(mnt, "e.f32", cmdf("%s dump %s token_embd.weight -o %s/e.f32", bin, m, mnt));
    CHECK(test_run(NULL, "umount %s", mnt) == 0);
}

TEST(outfile_write_errors_without_a_mount)
{
    const char *m = synth_model("model.gguf");
    const char *bin = test_moeq_bin();
    /* past RLIMIT_FSIZE: EFBIG, not a SIGXFSZ death with a file left */
    char *o = NULL;
    int rc = test_run(&o, "ulimit -f 64 && %s synth -o %s", bin, test_tmp("big.gguf"));
    CHECKF(rc == 1 && strstr(o, "writing ") && strstr(o, "big.gguf: File too large"), "exit %d: %s", rc, o);
    free(o);
    CHECK(access(test_tmp("big.gguf"), F_OK) != 0);
    CHECK(count_temps(test_tmpdir(), "big.gguf") == 0);
    rc = test_run(&o, "ulimit -f 64 && %s quantize %s %s F16", bin, m, test_tmp("q.gguf"));
    CHECKF(rc == 1 && strstr(o, "q.gguf: File too large"), "exit %d: %s", rc, o);
    free(o);
    CHECK(access(test_tmp("q.gguf"), F_OK) != 0);
    CHECK(count_temps(test_tmpdir(), "q.gguf") == 0);
    /* a full device written straight to (a node of /dev/full made here, so
     * a build that would rename over it harms nothing) */
    const char *full = test_tmp("full");
    if (mknod(full, S_IFCHR | 0666, makedev(1, 7)) != 0) full = "/dev/full";
    rc = test_run(&o, "%s dump %s token_embd.weight -o %s", bin, m, full);
    char want[600];
    snprintf(want, sizeof want, "writing %s: No space left on device", full);
    CHECKF(rc == 1 && strstr(o, want), "exit %d: %s", rc, o);
    free(o);
    struct stat st;
    CHECK(lstat(full, &st) == 0 && S_ISCHR(st.st_mode));
}

/* ---------------------------------------------------- writer processes */

static int g_hold[64];
static int g_n_hold;

/* Fork a writer of out (the GGUF writer, as every command uses it) that
 * writes part of a tensor, reports that its temporary file exists, and
 * waits until told to go (or this test ends). Returns its pid. */
static pid_t start_writer(const char *out)
{
    int up[2], down[2];
    REQUIRE(pipe(up) == 0 && pipe(down) == 0);
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(up[0]);
        close(down[1]);
        /* a command starts with default signal actions */
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        char err[512];
        gguf_writer *w = gguf_writer_open(out, NULL, err, sizeof err);
        if (!w) { fprintf(stderr, "%s\n", err); _exit(3); }
        uint64_t ne[1] = { 1 << 20 };
        static float buf[1 << 16];
        if (gguf_writer_add_tensor(w, "t", MOEQ_TYPE_F32, 1, ne) != 0) _exit(4);
        for (int i = 0; i < 4; i++)
            if (gguf_writer_write(w, buf, sizeof buf) != 0) _exit(5);
        char c = 'w';
        if (write(up[1], &c, 1) != 1) _exit(6);
        while (read(down[0], &c, 1) > 0) {}
        gguf_writer_abort(w);
        _exit(0);
    }
    close(up[1]);
    close(down[0]);
    char c;
    ssize_t r;
    while ((r = read(up[0], &c, 1)) < 0 && errno == EINTR) {}
    close(up[0]);
    REQUIREF(r == 1, "writer process %d did not start writing", (int)pid);
    if (g_n_hold < 64) g_hold[g_n_hold++] = down[1];
    return pid;
}

static int wait_status(pid_t pid)
{
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    return st;
}

TEST(outfile_signals_remove_the_temporary_file)
{
    const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
    const char *out = test_tmp("out.gguf");
    for (int i = 0; i < 3; i++) {
        pid_t pid = start_writer(out);
        CHECKF(count_temps(test_tmpdir(), "out.gguf") == 1, "no temporary file while writing");
        REQUIRE(kill(pid, sigs[i]) == 0);
        int st = wait_status(pid);
        CHECKF(WIFSIGNALED(st) && WTERMSIG(st) == sigs[i], "signal %d: status %#x (the signal must still end it)",
               sigs[i], st);
        CHECKF(count_temps(test_tmpdir(), "out.gguf") == 0, "signal %d left a temporary file", sigs[i]);
        CHECK(access(out, F_OK) != 0);
    }
}

TEST(outfile_sigkill_leaves_only_a_temp_that_the_next_run_removes)
{
    const char *m = synth_model("model.gguf");
    const char *out = test_tmp("out.f32");
    /* a live writer's temporary file is never taken for a stale one */
    pid_t live = start_writer(out);
    pid_t dead = 0;
    for (int i = 0; i < 3; i++) {
        pid_t pid = start_writer(out);
        REQUIRE(kill(pid, SIGKILL) == 0);
        int st = wait_status(pid);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        dead = pid;
        /* each writer removed the one killed before it: kills never pile up */
        CHECKF(count_temps(test_tmpdir(), "out.f32") == 2, "after kill %d: %d temporary files", i + 1,
               count_temps(test_tmpdir(), "out.f32"));
    }
    /* only temporary files named after the output, no final file */
    CHECK(access(out, F_OK) != 0);
    CHECK(count_entries(test_tmpdir()) == 1 + 2);
    /* a dead one of another output, and a name that only looks like one, stay */
    char other[600], odd[600];
    snprintf(other, sizeof other, "%s/.other.f32.tmp.%d.AbC123", test_tmpdir(), (int)dead);
    snprintf(odd, sizeof odd, "%s/.out.f32.tmp.notapid", test_tmpdir());
    FILE *f = fopen(other, "w");
    REQUIRE(f);
    fclose(f);
    f = fopen(odd, "w");
    REQUIRE(f);
    fclose(f);
    /* the next run of any command writing out.f32 removes the dead one */
    char *o = NULL;
    int rc = test_run(&o, "%s dump %s token_embd.weight -o %s", test_moeq_bin(), m, out);
    CHECKF(rc == 0, "%s", o);
    free(o);
    struct stat st;
    CHECK(stat(out, &st) == 0 && st.st_size == 512 * 256 * 4);
    CHECKF(count_temps(test_tmpdir(), "out.f32") == 2, "%d temporary files (want the live writer's and the odd name)",
           count_temps(test_tmpdir(), "out.f32"));
    CHECK(access(other, F_OK) == 0 && access(odd, F_OK) == 0);
    kill(live, SIGKILL);
    wait_status(live);
}

/* ------------------------------------------------- devices, FIFOs, sockets */

TEST(outfile_devices_fifos_and_sockets_are_never_replaced)
{
    const char *m = synth_model("model.gguf");
    const char *bin = test_moeq_bin();
    struct stat st;
    char *o = NULL;
    /* a null device (a node made here, so a build that renames over it
     * harms nothing; /dev/null itself when not root) */
    const char *null = test_tmp("null");
    if (mknod(null, S_IFCHR | 0666, makedev(1, 3)) != 0) null = "/dev/null";
    int rc = test_run(&o, "%s quantize -q %s %s Q8_0", bin, m, null);
    CHECKF(rc == 0, "%s", o);
    free(o);
    CHECK(lstat(null, &st) == 0 && S_ISCHR(st.st_mode));
    CHECK(count_temps(test_tmpdir(), "null") == 0);

    /* a FIFO gets the bytes */
    const char *ref = test_tmp("ref.f32"), *fifo = test_tmp("fifo"), *got = test_tmp("got.f32");
    REQUIRE(test_run(NULL, "%s dump %s token_embd.weight -o %s", bin, m, ref) == 0);
    REQUIRE(mkfifo(fifo, 0644) == 0);
    rc = test_run(&o, "timeout 60 cat %s > %s & %s dump %s token_embd.weight -o %s; r=$?; wait; exit $r",
                  fifo, got, bin, m, fifo);
    CHECKF(rc == 0, "%s", o);
    free(o);
    CHECK(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode));
    size_t n1 = 0, n2 = 0;
    char *a = test_read_file(ref, &n1), *b = test_read_file(got, &n2);
    CHECKF(a && b && n1 == 512 * 256 * 4 && n1 == n2 && !memcmp(a, b, n1), "FIFO got %zu bytes of %zu", n2, n1);
    free(b);

    /* stdout as a pipe, and as a regular file (the link is followed) */
    rc = test_run(&o, "%s dump %s token_embd.weight -o /dev/fd/1 | wc -c", bin, m);
    CHECKF(rc == 0 && o && atol(o) == 512 * 256 * 4, "%s", o);
    free(o);
    const char *redir = test_tmp("redir.f32");
    rc = test_run(&o, "%s dump %s token_embd.weight -o /dev/fd/1 > %s", bin, m, redir);
    CHECKF(rc == 0, "%s", o);
    free(o);
    b = test_read_file(redir, &n2);
    CHECKF(a && b && n1 == n2 && !memcmp(a, b, n1), "redirected stdout got %zu bytes", n2);
    free(b);
    free(a);

    /* a socket cannot be written to: refused, left alone */
    const char *sock = test_tmp("sock");
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    REQUIRE(strlen(sock) < sizeof sa.sun_path);
    memcpy(sa.sun_path, sock, strlen(sock) + 1);
    REQUIRE(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    rc = test_run(&o, "%s dump %s token_embd.weight -o %s", bin, m, sock);
    CHECKF(rc == 1 && strstr(o, "sock: is a socket"), "exit %d: %s", rc, o);
    free(o);
    CHECK(lstat(sock, &st) == 0 && S_ISSOCK(st.st_mode));
    close(fd);
    /* nor a directory */
    rc = test_run(&o, "%s synth -o %s", bin, test_tmpdir());
    CHECKF(rc == 1 && strstr(o, "is a directory"), "exit %d: %s", rc, o);
    free(o);
}

/* ------------------------------------------------------------ long ones */

/* Start the moeq binary with argv (argv[0] "moeq", NULL-terminated) and
 * return once the temporary file of output base exists in the test's
 * folder (the state waited for, polled). */
static pid_t start_moeq(char *const argv[], const char *base)
{
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul < 0 || dup2(nul, 1) < 0 || dup2(nul, 2) < 0) _exit(126);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        execv(test_moeq_bin(), argv);
        _exit(127);
    }
    for (;;) {
        if (count_temps(test_tmpdir(), base) > 0) return pid;
        int st;
        REQUIREF(waitpid(pid, &st, WNOHANG) == 0, "moeq %s ended before its temporary file was seen", argv[1]);
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}

/* `moeq synth` of a ~400 MB model to out. */
static pid_t start_big_synth(const char *out, const char *base)
{
    char *argv[] = { "moeq", "synth", "-o", (char *)out, "--layers", "8", "--experts", "64", NULL };
    return start_moeq(argv, base);
}

TEST(outfile_long_killed_synth_binary)
{
    if (!test_long() || test_sanitized()) SKIP("check-long only");
    const char *out = test_tmp("big.gguf");
    pid_t pid = start_big_synth(out, "big.gguf");
    REQUIRE(kill(pid, SIGTERM) == 0);
    int st = wait_status(pid);
    CHECKF(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "status %#x", st);
    CHECK(count_temps(test_tmpdir(), "big.gguf") == 0);
    CHECK(access(out, F_OK) != 0);
    for (int i = 0; i < 2; i++) {
        pid = start_big_synth(out, "big.gguf");
        REQUIRE(kill(pid, SIGKILL) == 0);
        st = wait_status(pid);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    }
    CHECK(count_temps(test_tmpdir(), "big.gguf") == 1); /* the second run removed the first's */
    CHECK(access(out, F_OK) != 0);
    char *o = NULL;
    int rc = test_run(&o, "%s synth -o %s", test_moeq_bin(), out);
    CHECKF(rc == 0, "%s", o);
    free(o);
    CHECK(count_temps(test_tmpdir(), "big.gguf") == 0);
    CHECK(access(out, F_OK) == 0);
}

TEST(outfile_long_interrupted_run_dump_logits)
{
    if (!test_long() || test_sanitized()) SKIP("check-long only");
    /* a model wide enough that the prompt's logits take seconds */
    const char *m = test_tmp("wide.gguf");
    char *o = NULL;
    int rc = test_run(&o, "%s synth -o %s --layers 4 --n-embd 2048 --ff-exp 512 --experts 4", test_moeq_bin(), m);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    const char *p = test_tmp("p.txt");
    REQUIRE(test_run(NULL, "head -c 800 data/calibration.txt > %s", p) == 0);
    const char *out = test_tmp("l.bin");
    char *argv[] = { "moeq", "run", "-m", (char *)m, "-f", (char *)p, "-n", "0", "-t", "1",
                     "--dump-logits", (char *)out, NULL };
    pid_t pid = start_moeq(argv, "l.bin");
    REQUIRE(kill(pid, SIGINT) == 0);
    int st = wait_status(pid);
    /* run's own Ctrl-C handler ends it with 130, after removing the temp */
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 130, "status %#x", st);
    CHECK(count_temps(test_tmpdir(), "l.bin") == 0);
    CHECK(access(out, F_OK) != 0);
}
