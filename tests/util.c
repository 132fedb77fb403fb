/*
 * util.c: helpers shared by the test files (paths, temporary files,
 * running the moeq binary, reading files, HTTP over curl, `moeq serve` as
 * a child process).
 */
#include "test.h"
#include "synth/synth.h"

#include <jansson.h>

#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *test_shared_dir(void)
{
    static char buf[4096];
    static int done;
    if (!done) {
        done = 1;
        const char *env = getenv("MOEQ_SHARED");
        snprintf(buf, sizeof buf, "%s", env && *env ? env : "../shared");
        struct stat st;
        if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) buf[0] = 0;
    }
    return buf[0] ? buf : NULL;
}

const char *test_shared_path(const char *rel)
{
    static char ring[8][4096];
    static int k;
    const char *dir = test_shared_dir();
    if (!dir) SKIP("../shared is absent");
    char *p = ring[k++ % 8];
    snprintf(p, 4096, "%s/%s", dir, rel);
    if (access(p, R_OK) != 0) SKIP("%s is absent", p);
    return p;
}

const char *test_tmp(const char *name)
{
    static char ring[16][4096];
    static int k;
    char *p = ring[k++ % 16];
    snprintf(p, 4096, "%s/%s", test_tmpdir(), name);
    return p;
}

const char *test_synth_model(const char *name, const char *args)
{
    const char *p = test_tmp(name);
    char *o = NULL;
    int rc = test_run(&o, "%s synth -o %s %s", test_moeq_bin(), p, args ? args : "");
    REQUIREF(rc == 0, "synth %s: %s", name, o ? o : "");
    free(o);
    return p;
}

const char *test_kld_base(const char **m, const char **q, const char *extra, char **out)
{
    *m = test_synth_model("s.gguf", NULL);
    *q = test_synth_model("q.gguf", "--recipe asym-2bitexp --mode direct");
    const char *base = test_tmp("base.kld");
    int rc = test_run(out, "%s perplexity -m %s -f data/calibration.txt -c 64 --chunks 4 %s --kl-divergence-base %s",
                      test_moeq_bin(), *m, extra, base);
    REQUIREF(rc == 0, "%s", *out ? *out : "");
    return base;
}

const char *test_synth_moe_lib(const char *name)
{
    moeq_synth_cfg c;
    char err[256];
    REQUIRE(moeq_synth_preset(&c, "tiny") == 0);
    c.n_expert = 4;
    c.n_expert_used = 2;
    static char p[4096];   /* not test_tmp's ring: callers take many paths after it */
    snprintf(p, sizeof p, "%s", test_tmp(name));
    REQUIREF(moeq_synth_write(&c, p, 2, NULL, NULL, err, sizeof err) == 0, "%s", err);
    return p;
}

const char *test_moeq_bin(void)
{
    const char *b = getenv("MOEQ_BIN");
    return b && *b ? b : "./moeq";
}

static int run_cmd(char **out, const char *cmd)
{
    char full[8300];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    fflush(NULL);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += r;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) break;
            buf = nb; cap *= 2;
        }
    }
    if (buf) buf[len] = 0;
    int st = pclose(p);
    if (out) *out = buf; else free(buf);
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

int test_run(char **out, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return run_cmd(out, cmd);
}

char *test_run_ok(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char *out = NULL;
    int rc = run_cmd(&out, cmd);
    REQUIREF(out, "%s: no output captured", cmd);
    CHECKF(rc == 0, "%s: exit %d: %s", cmd, rc, out);
    return out;
}

void *test_read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
    long sz = ftell(f);
    if (sz < 0) { fclose(f); return NULL; }
    rewind(f);
    char *buf = malloc((size_t)sz + 1);
    if (buf && fread(buf, 1, (size_t)sz, f) != (size_t)sz) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[sz] = 0; if (n) *n = (size_t)sz; }
    return buf;
}

int test_long(void) { const char *e = getenv("MOEQ_LONG"); return e && *e && *e != '0'; }

int test_sanitized(void)
{
    const char *s = getenv("MOEQ_SUITE");
    return s && strcmp(s, "asan") == 0;
}

int test_have_curl(void) { return test_run(NULL, "curl --version >/dev/null") == 0; }

int test_http(int port, const char *method, const char *path, const char *body, const char *extra,
              int timeout_s, char **out)
{
    static int k;
    char bf[64];
    snprintf(bf, sizeof bf, "http%d.json", k++);
    const char *bp = test_tmp(bf);
    if (body) {
        FILE *fp = fopen(bp, "wb");
        if (fp) {
            fwrite(body, 1, strlen(body), fp);
            fclose(fp);
        }
    }
    char *o = NULL;
    test_run(&o, "curl -sS -N -m %d -X %s %s%s -H 'Content-Type: application/json' %s -w '\\n%%{http_code}' "
             "http://127.0.0.1:%d%s",
             timeout_s, method, body ? "--data-binary @" : "", body ? bp : "", extra ? extra : "", port, path);
    int status = 0;
    if (o) {
        char *nl = strrchr(o, '\n');
        if (nl) { status = atoi(nl + 1); *nl = 0; }
    }
    if (out) *out = o; else free(o);
    return status;
}

char *test_sse_text(const char *sse, int *done)
{
    size_t cap = 1 << 16;
    char *out = calloc(1, cap);
    char *copy = strdup(sse ? sse : ""), *save = NULL;
    if (done) *done = 0;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!strcmp(line, "data: [DONE]")) { if (done) *done = 1; continue; }
        if (strncmp(line, "data: {", 7) != 0) continue;
        if (done) *done = 0;
        json_t *j = json_loads(line + 6, 0, NULL);
        json_t *c = json_array_get(json_object_get(j, "choices"), 0);
        json_t *t = json_object_get(c, "text");
        if (!t) t = json_object_get(json_object_get(c, "delta"), "content");
        if (json_is_string(t)) strncat(out, json_string_value(t), cap - strlen(out) - 1);
        json_decref(j);
    }
    free(copy);
    return out;
}

const struct test_bad_request test_bad_requests_common[] = {
    { "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",", 400, "not valid JSON" },
    { "/v1/chat/completions", "{\"messages\":[]}", 400, "must not be empty" },
    { "/v1/chat/completions", "{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}", 400, "'bot'" },
    { "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":\"9\"}", 400, "'max_tokens'" },
    { "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"warm\"}", 400, "'temperature'" },
    { "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":3}", 400, "'n' must be 1" },
    { "/v1/completions", "{\"prompt\":[1,-5]}", 400, "'prompt[1]'" },
    { "/tokenize", "{\"content\":5}", 400, "'content'" },
    { "/detokenize", "{\"tokens\":[1,\"a\"]}", 400, "'tokens[1]'" },
    { "/v1/embeddings", "{}", 404, "no such endpoint" },
};
const size_t test_n_bad_requests_common = sizeof test_bad_requests_common / sizeof test_bad_requests_common[0];

void test_http_bad_requests(int port, const struct test_bad_request *cases, size_t n, const char *extra,
                            int timeout_s)
{
    for (size_t i = 0; i < n; i++) {
        char *o = NULL;
        int st = test_http(port, "POST", cases[i].path, cases[i].body, extra, timeout_s, &o);
        json_t *j = o ? json_loads(o, 0, NULL) : NULL;
        const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        CHECKF(st == cases[i].status && m && strstr(m, cases[i].needle),
               "bad request %zu (%s %.60s): status %d (want %d), body %s, want a message with '%s'", i,
               cases[i].path, cases[i].body, st, cases[i].status, o ? o : "(none)", cases[i].needle);
        json_decref(j);
        free(o);
    }
}

void test_http_too_big(int port, size_t prompt_bytes, size_t body_bytes, const char *extra, int timeout_s)
{
    const size_t n = prompt_bytes > body_bytes ? prompt_bytes : body_bytes;
    char *b = malloc(n + 64);
    REQUIRE(b);
    strcpy(b, "{\"prompt\":\"");
    const size_t at = strlen(b);
    for (size_t i = 0; i < prompt_bytes; i += 6) memcpy(b + at + i, "hello ", 6);
    strcpy(b + at + prompt_bytes, "\"}");
    const struct test_bad_request too_long = { "/v1/completions", b, 400, "context holds" };
    test_http_bad_requests(port, &too_long, 1, extra, timeout_s);
    memset(b, ' ', body_bytes);
    b[0] = '{';
    b[body_bytes - 1] = '}';
    b[body_bytes] = 0;
    const struct test_bad_request too_big = { "/v1/completions", b, 413, "over the limit" };
    test_http_bad_requests(port, &too_big, 1, extra, timeout_s);
    free(b);
}

double test_http_metric(int port, const char *name, const char *auth)
{
    char *o = NULL;
    double v = -1;
    if (test_http(port, "GET", "/metrics", NULL, auth, 120, &o) == 200) {
        char key[128];
        snprintf(key, sizeof key, "\n%s ", name);
        char *p = strstr(o, key);
        if (p) v = atof(p + strlen(key));
    }
    free(o);
    return v;
}

void test_wait_metric(int port, const char *name, double value, const char *auth)
{
    while (test_http_metric(port, name, auth) != value) usleep(10000);
}

int test_http_concurrent(int port, const char *path, const char *const *bodies, int n, int timeout_s,
                         char **out)
{
    size_t cap = 256 + (size_t)n * (2 * strlen(test_tmpdir()) + strlen(path) + 128), at = 0;
    char *script = malloc(cap);
    if (!script) return -1;
    for (int i = 0; i < n; i++) {
        char bf[32];
        snprintf(bf, sizeof bf, "c%d.json", i);
        FILE *fp = fopen(test_tmp(bf), "w");
        if (fp) {
            fputs(bodies[i], fp);
            fclose(fp);
        }
        at += (size_t)snprintf(script + at, cap - at,
                               "curl -sS -N -m %d --data-binary @%s/c%d.json http://127.0.0.1:%d%s > %s/o%d.txt & ",
                               timeout_s, test_tmpdir(), i, port, path, test_tmpdir(), i);
    }
    snprintf(script + at, cap - at, "wait");
    int rc = test_run(NULL, "%s", script);
    free(script);
    for (int i = 0; i < n; i++) {
        char of[32];
        size_t len;
        snprintf(of, sizeof of, "o%d.txt", i);
        out[i] = test_read_file(test_tmp(of), &len);
    }
    return rc;
}

const char *test_tiny_model(void)
{
    static char path[4096];
    const char *p = test_tmp("tiny.gguf");
    if (test_run(NULL, "%s synth -o %s --preset tiny >/dev/null 2>&1", test_moeq_bin(), p) == 0 &&
        access(p, R_OK) == 0) {
        snprintf(path, sizeof path, "%s", p);
        return path;
    }
    return test_shared_path("models/tiny-a/tiny-a-q8_0.gguf");
}

const char *test_npm_package(const char *pkg, const char *script)
{
    static char dir[4096];
    if (test_run(NULL, "node --version >/dev/null 2>&1") != 0) SKIP("node is absent");
    if (access(script, R_OK) != 0) SKIP("%s absent (run from the repo root)", script);
    char cwd[3000];
    REQUIRE(getcwd(cwd, sizeof cwd));
    snprintf(dir, sizeof dir, "%s/build/npm/node_modules/%s", cwd, pkg);
    char pj[4200];
    snprintf(pj, sizeof pj, "%s/package.json", dir);
    if (access(pj, R_OK) != 0 &&
        test_run(NULL, "mkdir -p build/npm && cd build/npm && timeout 120 npm install --prefix . --no-audit --no-fund "
                       "--loglevel=error %s >/dev/null 2>&1", pkg) != 0)
        SKIP("the %s npm package could not be installed", pkg);
    if (access(pj, R_OK) != 0) SKIP("%s npm package absent", pkg);
    return dir;
}

double test_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void test_serve_start(struct test_srv *s, const char *model, const char *args)
{
    memset(s, 0, sizeof *s);
    snprintf(s->log, sizeof s->log, "%s", test_tmp("serve.log"));
    snprintf(s->model, sizeof s->model, "%s", model);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "exec %s serve -m '%s' --host 127.0.0.1 --port 0 -t 2 %s", test_moeq_bin(), model, args);
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) { dup2(fd, 1); dup2(fd, 2); close(fd); }
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    double t0 = test_now();
    while (!s->port && test_now() - t0 < 30) {
        usleep(50000);
        size_t n;
        char *log = test_read_file(s->log, &n);
        char *p = log ? strstr(log, "listening on http://127.0.0.1:") : NULL;
        if (p) s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
        free(log);
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) { s->pid = 0; break; }
    }
    REQUIREF(s->port > 0, "server did not start (see its log)");
    int status = 0;
    while (test_now() - t0 < 120) {
        char *o = NULL;
        status = test_http(s->port, "GET", "/health", NULL, NULL, 120, &o);
        free(o);
        if (status != 503) break;
        usleep(100000);
    }
    REQUIREF(status == 200, "health %d after loading", status);
}

int test_serve_stop(struct test_srv *s)
{
    if (!s->pid) return -1;
    kill(s->pid, SIGTERM);
    double t0 = test_now();
    int st;
    while (test_now() - t0 < 30) {
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(20000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    s->pid = 0;
    return -1;
}
