/*
 * test_bench.c: `moeq bench` with llama-bench's spellings: comma lists
 * run as a cross product, -pg and -d rows named as llama-bench names
 * them, the threads actually used, each output format (md, csv, json,
 * jsonl) read back, and bad values as one-line usage errors. Nothing here
 * looks at a speed, only at which rows there are and what they say.
 */
#include "test.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *tiny(void)
{
    return test_synth_model("b.gguf", "--layers 1 --vocab 512 --experts 4 --ctx 256");
}

/* The rows of `bench ARGS -o jsonl -r 1`, as a JSON array; the test ends
 * when it fails or a line is not a JSON object. */
static json_t *bench_rows(const char *m, const char *args)
{
    char *o = NULL;
    int rc = test_run(&o, "%s bench -m %s -r 1 %s -o jsonl 2>/dev/null", test_moeq_bin(), m, args);
    REQUIREF(rc == 0, "bench %s: rc %d: %s", args, rc, o ? o : "");
    json_t *rows = json_array();
    for (char *line = o, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = 0;
        json_error_t je;
        json_t *r = json_loads(line, 0, &je);
        REQUIREF(json_is_object(r), "bench %s: not a JSON object: %s (%s)", args, line, je.text);
        json_array_append_new(rows, r);
    }
    free(o);
    return rows;
}

static const char *str(json_t *row, const char *k) { return json_string_value(json_object_get(row, k)); }
static long long num(json_t *row, const char *k) { return (long long)json_integer_value(json_object_get(row, k)); }

TEST(bench_lists_run_the_cross_product)
{
    const char *m = tiny();
    /* short spellings: 2 prompts + 1 gen, x 2 thread counts x 2 K types */
    json_t *rows = bench_rows(m, "-p 8,16 -n 2 -t 1,2 -ctk f16,q8_0");
    REQUIRE(json_array_size(rows) == 12);
    int seen[2][2][3] = { { { 0 } } };
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
        int t = (int)num(r, "n_threads"), k = !strcmp(str(r, "type_k"), "Q8_0");
        int test = !strcmp(str(r, "test"), "pp8") ? 0 : !strcmp(str(r, "test"), "pp16") ? 1
                 : !strcmp(str(r, "test"), "tg2") ? 2 : -1;
        CHECKF(t == 1 || t == 2, "n_threads %d", t);
        REQUIREF(test >= 0, "test '%s'", str(r, "test"));
        if (t == 1 || t == 2) seen[t - 1][k][test]++;
        CHECK(!strcmp(str(r, "type_v"), "F16"));
        CHECK(num(r, "n_depth") == 0 && num(r, "n_batch") == 512);
        CHECK(num(r, "n_prompt") == (test == 0 ? 8 : test == 1 ? 16 : 0));
        CHECK(num(r, "n_gen") == (test == 2 ? 2 : 0));
        CHECK(json_array_size(json_object_get(r, "samples_ts")) == 1);
        CHECK(json_real_value(json_object_get(r, "avg_ts")) > 0);
        CHECK(num(r, "model_size") > 0 && num(r, "model_n_params") > 0);
        CHECK(strstr(str(r, "model_filename"), "b.gguf") != NULL);
    }
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < 2; k++)
            for (int x = 0; x < 3; x++) CHECKF(seen[t][k][x] == 1, "combination %d/%d/%d seen %d times", t, k, x, seen[t][k][x]);
    json_decref(rows);
    /* long spellings, -d and -pg: (1 prompt + 2 gens + 1 pg) x 2 depths */
    rows = bench_rows(m, "--n-prompt 8 --n-gen 2,3 -pg 8,2 --threads 1 --repetitions 2 --n-depth 0,16"
                         " --cache-type-v q8_0");
    REQUIRE(json_array_size(rows) == 8);
    static const char *const names[] = { "pp8", "tg2", "tg3", "pp8+tg2",
                                         "pp8 @ d16", "tg2 @ d16", "tg3 @ d16", "pp8+tg2 @ d16" };
    json_array_foreach(rows, i, r) {
        CHECKF(!strcmp(str(r, "test"), names[i]), "row %zu: '%s', not '%s'", i, str(r, "test"), names[i]);
        CHECK(num(r, "n_depth") == (i < 4 ? 0 : 16));
        CHECK(num(r, "n_threads") == 1 && !strcmp(str(r, "type_v"), "Q8_0"));
        CHECK(json_array_size(json_object_get(r, "samples_ns")) == 2);
        CHECK(num(r, "avg_ns") > 0);
    }
    CHECK(num(json_array_get(rows, 3), "n_prompt") == 8 && num(json_array_get(rows, 3), "n_gen") == 2);
    json_decref(rows);
    /* -b is a list too; --no-warmup and llama-bench's -ngl are accepted */
    rows = bench_rows(m, "-p 16 -n 0 -b 4,16 -t 1 --no-warmup -ngl 99");
    REQUIRE(json_array_size(rows) == 2);
    CHECK(num(json_array_get(rows, 0), "n_batch") == 4 && num(json_array_get(rows, 1), "n_batch") == 16);
    json_decref(rows);
    /* without -t: all the cores, and the row says how many */
    rows = bench_rows(m, "-p 8 -n 0");
    REQUIRE(json_array_size(rows) == 1);
    CHECK(num(json_array_get(rows, 0), "n_threads") >= 1);
    json_decref(rows);
}

/* Split one csv line (quoted fields with "" for a quote) into fields. */
static int csv_split(char *line, char **f, int cap)
{
    int n = 0;
    char *w = line;
    for (char *p = line; n < cap;) {
        f[n++] = w;
        if (*p == '"') {
            for (p++; *p && !(*p == '"' && p[1] != '"'); p++) {
                if (*p == '"') p++;
                *w++ = *p;
            }
            if (*p) p++;
        } else {
            while (*p && *p != ',') *w++ = *p++;
        }
        int more = *p == ',';
        *w++ = 0;
        if (!more) break;
        p++;
    }
    return n;
}

TEST(bench_output_formats_read_back)
{
    const char *m = tiny();
    char *o = NULL;
    /* json: one array of objects, nothing else on stdout */
    int rc = test_run(&o, "%s bench -m %s -p 8 -n 2 -d 4 -t 1 -r 2 -o json 2>/dev/null", test_moeq_bin(), m);
    REQUIREF(rc == 0, "json: %s", o ? o : "");
    json_error_t je;
    json_t *a = json_loads(o, 0, &je);
    REQUIREF(json_is_array(a) && json_array_size(a) == 2, "not an array of 2: %s (%s)", o, je.text);
    CHECK(!strcmp(str(json_array_get(a, 0), "test"), "pp8 @ d4"));
    CHECK(!strcmp(str(json_array_get(a, 1), "test"), "tg2 @ d4"));
    CHECK(json_array_size(json_object_get(json_array_get(a, 1), "samples_ts")) == 2);
    json_decref(a);
    free(o);
    /* csv: a header of llama-bench's field names, then one row per test */
    rc = test_run(&o, "%s bench -m %s -p 8,16 -n 0 -t 1 -r 2 -o csv 2>/dev/null", test_moeq_bin(), m);
    REQUIREF(rc == 0, "csv: %s", o ? o : "");
    char *lines[4];
    int nl = 0;
    for (char *p = o; *p && nl < 4; nl++) {
        lines[nl] = p;
        char *e = strchr(p, '\n');
        REQUIREF(e != NULL, "csv line not ended: %s", p);
        *e = 0;
        p = e + 1;
    }
    REQUIREF(nl == 3, "csv has %d lines", nl);
    char *head[64], *row[64];
    int nh = csv_split(lines[0], head, 64);
    static const char *const want[] = { "model_filename", "model_type", "model_size", "model_n_params", "n_threads",
                                        "type_k", "n_prompt", "n_gen", "n_depth", "test", "avg_ts", "stddev_ts",
                                        "samples_ts" };
    int col_test = -1, col_np = -1, col_samples = -1;
    for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
        int at = -1;
        for (int h = 0; h < nh; h++) if (!strcmp(head[h], want[w])) at = h;
        CHECKF(at >= 0, "csv header lacks %s", want[w]);
        if (!strcmp(want[w], "test")) col_test = at;
        if (!strcmp(want[w], "n_prompt")) col_np = at;
        if (!strcmp(want[w], "samples_ts")) col_samples = at;
    }
    REQUIRE(col_test >= 0 && col_np >= 0 && col_samples >= 0);
    for (int l = 1; l < 3; l++) {
        int nr = csv_split(lines[l], row, 64);
        REQUIREF(nr == nh, "csv row %d has %d fields, header %d", l, nr, nh);
        CHECK(!strcmp(row[col_test], l == 1 ? "pp8" : "pp16"));
        CHECK(atoi(row[col_np]) == (l == 1 ? 8 : 16));
        CHECKF(strchr(row[col_samples], ' ') != NULL, "two samples: '%s'", row[col_samples]);
    }
    free(o);
    /* md (the default): the table, the threads column a number */
    rc = test_run(&o, "%s bench -m %s -p 8 -n 0 -pg 4,2 -t 1 -r 1 2>&1", test_moeq_bin(), m);
    REQUIREF(rc == 0, "md: %s", o ? o : "");
    CHECK(strstr(o, "| model | size | params | threads | test | t/s |") != NULL);
    CHECKF(strstr(o, " | 1 | pp8 | ") && strstr(o, " | 1 | pp4+tg2 | ") && strstr(o, "peak RSS:"), "%s", o);
    free(o);
    /* -ctk adds the cache type columns */
    rc = test_run(&o, "%s bench -m %s -p 8 -n 0 -t 1 -r 1 -ctk q8_0 2>&1", test_moeq_bin(), m);
    REQUIREF(rc == 0, "md: %s", o ? o : "");
    CHECKF(strstr(o, "| type_k | type_v |") && strstr(o, "| Q8_0 | F16 | pp8 |"), "%s", o);
    free(o);
    /* and -b the batch column */
    rc = test_run(&o, "%s bench -m %s -p 8 -n 0 -t 1 -r 1 -b 4 2>&1", test_moeq_bin(), m);
    REQUIREF(rc == 0, "md: %s", o ? o : "");
    CHECKF(strstr(o, "| threads | n_batch | test |") && strstr(o, " | 1 | 4 | pp8 | "), "%s", o);
    free(o);
}

TEST(bench_bad_values_are_one_line_errors)
{
    const char *m = tiny();
    static const char *const bad[] = {
        "-p 8,,16", "-p -1", "-p x", "-p 8,", "-n 2,y", "-t 1,abc", "-d -4", "-pg 8", "-pg 8,2,3", "-pg 0,2",
        "-o xml", "-ctk f16,q4_0", "-ctv ,", "-r 0", "-p 0 -n 0", "-p", "-b 0", "-b 8,x", "-ngl x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *o = NULL;
        int rc = test_run(&o, "%s bench -m %s %s", test_moeq_bin(), m, bad[i]);
        CHECKF(rc == 2, "'%s': rc %d", bad[i], rc);
        const char *nl = o ? strchr(o, '\n') : NULL;
        CHECKF(o && strncmp(o, "moeq: bench: ", 13) == 0 && nl && nl[1] == 0, "'%s': %s", bad[i], o ? o : "");
        free(o);
    }
}
