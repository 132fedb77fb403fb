/*
 * cli.c: helpers shared by the subcommands: error printing with the
 * "moeq:" prefix, strict number parsing (a trailing character is an
 * error, not silently ignored) and comma lists, the KV cache options, and
 * logging and progress (one line per step when stderr is not a terminal).
 */
#include "cmd.h"
#include "engine/engine.h"
#include "quant/quant_plan.h"
#include "quant/quants.h"
#include "util/util.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "moeq: %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see 'moeq %s --help')\n", cmd);
    return 2;
}

void cli_error(const char *fmt, ...)
{
    va_list ap;
    cli_progress_end();
    fprintf(stderr, "moeq: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int cli_parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

int cli_parse_f64(const char *s, double *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

int cli_parse_size(const char *s, uint64_t *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) return -1;
    double mul = 1;
    char unit = (char)toupper((unsigned char)*end);
    if (unit) {
        const char *units = "KMGT";
        const char *u = strchr(units, unit);
        if (!u) return -1;
        end++;
        int binary = 0;
        if (*end == 'i' || *end == 'I') { binary = 1; end++; }
        if (*end == 'B' || *end == 'b') end++;
        if (*end) return -1;
        /* llama.cpp-style tools treat "16G" as GiB; so do we. */
        (void)binary;
        for (const char *p = units; p <= u; p++) mul *= 1024.0;
    }
    double r = v * mul;
    if (r >= 1.8e19) return -1;
    *out = (uint64_t)r;
    return 0;
}

int cli_split_list(const char *s, char **items, int cap, char *buf, size_t buflen)
{
    if (!s || strlen(s) >= buflen) return -1;
    memcpy(buf, s, strlen(s) + 1);
    int n = 0;
    for (char *p = buf;;) {
        char *c = strchr(p, ',');
        if (c) *c = 0;
        if (!*p || n >= cap) return -1;
        items[n++] = p;
        if (!c) return n;
        p = c + 1;
    }
}

int cli_parse_i64_list(const char *s, int64_t lo, int64_t hi, int64_t *out, int cap)
{
    char buf[1024], *items[CLI_LIST_MAX];
    int n = cli_split_list(s, items, cap < CLI_LIST_MAX ? cap : CLI_LIST_MAX, buf, sizeof buf);
    for (int i = 0; i < n; i++)
        if (cli_parse_i64(items[i], &out[i]) || out[i] < lo || out[i] > hi) return -1;
    return n;
}

const char *cli_recipe_names(char *buf, size_t n)
{
    size_t at = 0;
    if (n) buf[0] = 0;
    for (const struct moeq_recipe *r = moeq_recipe_list(); r->name && at < n; r++) {
        int k = snprintf(buf + at, n - at, "%s%s", at ? ", " : "", r->name);
        if (k < 0) break;
        at += (size_t)k;
    }
    return buf;
}

void cli_print_recipes(FILE *out, const char *indent)
{
    for (const struct moeq_recipe *r = moeq_recipe_list(); r->name; r++) {
        const struct moeq_mix *base = moeq_mix_of_ftype(r->ftype);
        int col = fprintf(out, "%s%s:", indent, r->name);
        for (int g = 0; g <= MOEQ_GROUP_COUNT; g++) {
            char item[64];
            if (g == MOEQ_GROUP_COUNT) snprintf(item, sizeof item, "other %s", base ? moeq_type_name(base->base_type) : "?");
            else if (r->types[g] >= 0) snprintf(item, sizeof item, "%s %s", moeq_group_key(g), moeq_type_name(r->types[g]));
            else continue;
            int last = g == MOEQ_GROUP_COUNT;
            if (col + 1 + (int)strlen(item) + 1 > 78) col = fprintf(out, "\n%s   ", indent);
            col += fprintf(out, " %s%s", item, last ? "" : ",");
        }
        fputc('\n', out);
    }
}

int cli_print_json(json_t *j, const char *cmd)
{
    char *txt = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    if (!txt) { cli_error("%s: out of memory", cmd); return 1; }
    printf("%s\n", txt);
    free(txt);
    fflush(stdout);
    return 0;
}

int cli_is_help(const char *arg)
{
    return arg && (!strcmp(arg, "-h") || !strcmp(arg, "--help"));
}

char *cli_read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    int in = !strcmp(path, "-");
    FILE *f = in ? stdin : fopen(path, "rb");
    if (!f) { snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) { if (!in) fclose(f); snprintf(err, errlen, "%s: out of memory", path); return NULL; }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
        if (cap - n - 1 == 0) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) free(buf);
            buf = nb;
            cap *= 2;
        }
    }
    int bad = ferror(f) ? errno : 0;
    if (!in) fclose(f);
    if (bad) { free(buf); snprintf(err, errlen, "%s: cannot read: %s", path, strerror(bad)); return NULL; }
    buf[n] = 0;
    *len = n;
    return buf;
}

int cli_kv_option(const char *opt, const char *val, int *type_k, int *type_v)
{
    int *out;
    if (!strcmp(opt, "-ctk") || !strcmp(opt, "--cache-type-k")) out = type_k;
    else if (!strcmp(opt, "-ctv") || !strcmp(opt, "--cache-type-v")) out = type_v;
    else return 0;
    int t = moeq_kv_type_from_name(val);
    if (t < 0) return -1;
    *out = t;
    return 1;
}

double cli_token_nll(const float *row, int n_vocab, int tok)
{
    float mx = row[0];
    for (int i = 1; i < n_vocab; i++) if (row[i] > mx) mx = row[i];
    double se = 0;
    for (int i = 0; i < n_vocab; i++) se += expf(row[i] - mx);
    return (double)mx + log(se) - row[tok];
}

/* ---------------------------------------------------- logging, progress */

int cli_log_level = CLI_LOG_INFO;

int cli_log_level_from_name(const char *name)
{
    static const char *const names[] = { "error", "warn", "info", "debug" };
    for (int i = 0; i < 4; i++)
        if (name && !strcmp(name, names[i])) return i;
    return -1;
}

int cli_log_option(const char *cmd, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) { cli_log_level = CLI_LOG_ERROR; return 1; }
    if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) { cli_log_level = CLI_LOG_DEBUG; return 1; }
    if (strcmp(a, "--log-level") != 0) return 0;
    if (*i + 1 >= argc) return cli_usage_error(cmd, "--log-level needs error, warn, info or debug");
    int l = cli_log_level_from_name(argv[++*i]);
    if (l < 0) return cli_usage_error(cmd, "--log-level must be error, warn, info or debug, not '%s'", argv[*i]);
    cli_log_level = l;
    return 1;
}

/* A progress line is open on the terminal (written with '\r', no '\n'). */
static int progress_open;

static void vlog(int level, const char *fmt, va_list ap)
{
    if (cli_log_level < level) return;
    if (progress_open) { fputc('\n', stderr); progress_open = 0; }
    fprintf(stderr, "moeq: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void cli_info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(CLI_LOG_INFO, fmt, ap);
    va_end(ap);
}

void cli_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(CLI_LOG_WARN, fmt, ap);
    va_end(ap);
}

void cli_debug(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(CLI_LOG_DEBUG, fmt, ap);
    va_end(ap);
}

void cli_progress(const char *fmt, ...)
{
    if (cli_log_level < CLI_LOG_INFO) return;
    static int tty = -1;
    if (tty < 0) tty = isatty(STDERR_FILENO);
    va_list ap;
    va_start(ap, fmt);
    fputs(tty ? "\r\033[Kmoeq: " : "moeq: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (tty) progress_open = 1;
    else fputc('\n', stderr);
    fflush(stderr);
}

void cli_progress_cb(void *ud, const struct moeq_progress *p)
{
    (void)ud;
    int w = p->total >= 1000 ? 4 : 3;
    cli_progress("%s [%*d/%*d] %-28s %5.1fs ETA %5.1fs", p->task, w, p->done, w, p->total,
                 p->item ? p->item : "", p->elapsed_s, p->eta_s);
}

void cli_progress_end(void)
{
    if (progress_open) { fputc('\n', stderr); progress_open = 0; }
}
