/*
 * cmd.h: the subcommands of the moeq binary and the small helpers they
 * share (usage errors, number and comma-list parsing, --json output,
 * logging and progress). Each subcommand lives in its own
 * tools/cmd_NAME.c and returns the process exit status: 0 success, 1 an
 * error (one line on stderr prefixed "moeq: "), 2 a usage error.
 */
#ifndef MOEQ_CMD_H
#define MOEQ_CMD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

int cmd_info(int argc, char **argv);
int cmd_dump(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_imatrix(int argc, char **argv);
int cmd_fit(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_kbench(int argc, char **argv);
int cmd_serve(int argc, char **argv);

/* Print "moeq: CMD: message" and return 2 (usage error). */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Print "moeq: message" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Parse an integer / float / size ("16G", "512M", "1.5GiB"); 0 ok, -1 bad. */
int cli_parse_i64(const char *s, int64_t *out);
int cli_parse_f64(const char *s, double *out);
int cli_parse_size(const char *s, uint64_t *out);
/* Comma lists, as llama-bench takes them ("-p 64,128,512"): split s into
 * at most cap items, NUL-terminated copies in buf (buflen bytes); returns
 * the count, or -1 when an item is empty, there are more than cap, or s
 * does not fit in buf. The integer form wants each item in [lo, hi]. */
#define CLI_LIST_MAX 64
int cli_split_list(const char *s, char **items, int cap, char *buf, size_t buflen);
int cli_parse_i64_list(const char *s, int64_t lo, int64_t hi, int64_t *out, int cap);
/* Read a whole file ("-": standard input) into a NUL-terminated malloc'd
 * buffer; NULL with err set ("PATH: reason"). */
char *cli_read_file(const char *path, size_t *len, char *err, size_t errlen);
/* The KV cache options -ctk/--cache-type-k T and -ctv/--cache-type-v T:
 * 0 when opt is neither; 1 when it is one and val names f16 or q8_0 (any
 * case), stored as MOEQ_TYPE_* in *type_k or *type_v; -1 for another val. */
int cli_kv_option(const char *opt, const char *val, int *type_k, int *type_v);
/* -log softmax(row)[tok] over n_vocab logits (max-shifted, double sum). */
double cli_token_nll(const float *row, int n_vocab, int tok);
/* The names of the recipes (quant_plan's table) as "a, b", for help and
 * error messages; returns buf. */
const char *cli_recipe_names(char *buf, size_t n);
/* Each recipe as help lines: "INDENTname: group type, ..., other BASE",
 * wrapped under INDENT plus four spaces. */
void cli_print_recipes(FILE *out, const char *indent);
/* --json output, one style for every command: j (a jansson object; NULL
 * counts as out of memory) printed to stdout indented by two, then freed.
 * 0, or 1 after "moeq: CMD: out of memory". */
struct json_t;
int cli_print_json(struct json_t *j, const char *cmd);
/* True when argv[i] is "-h" or "--help". */
int cli_is_help(const char *arg);

/* ---- logging and progress, one way for every command ----
 * The level is set by -q/--quiet (error), -v/--verbose (debug) and
 * --log-level error|warn|info|debug; info is the default. Errors
 * (cli_error, cli_usage_error) always print. */
enum cli_log_level { CLI_LOG_ERROR, CLI_LOG_WARN, CLI_LOG_INFO, CLI_LOG_DEBUG };
extern int cli_log_level;
/* "error".."debug" -> enum cli_log_level, -1 for anything else. */
int cli_log_level_from_name(const char *name);
/* When argv[*i] is -q, --quiet, -v, --verbose or --log-level L (which
 * takes argv[*i + 1] and advances *i): sets cli_log_level, returns 1;
 * 0 when it is none of them; 2 after a usage error (bad or missing L). */
int cli_log_option(const char *cmd, int argc, char **argv, int *i);
/* The same inside a command's option loop over argv[i]: continue after a
 * logging option, return 2 from the command after its usage error. */
#define CLI_LOG_OPTION(cmd, argc, argv, i)                                 \
    { int lr_ = cli_log_option(cmd, argc, argv, &(i));                     \
      if (lr_ == 2) return 2;                                              \
      if (lr_) continue; }
/* "moeq: message" on stderr at the info / warn / debug level. */
void cli_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* One progress step ("moeq: " + message) at the info level: on a terminal
 * it rewrites the current line in place; otherwise (a log, a pipe) it is
 * one line ending in a newline, never a carriage return. */
void cli_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The library's progress callback (util.h's moeq_progress_fn; ud unused):
 * "TASK [done/total] ITEM  ELAPSEDs ETA Ns" through cli_progress. */
struct moeq_progress;
void cli_progress_cb(void *ud, const struct moeq_progress *p);
/* Ends an in-place progress line (a newline on a terminal, else nothing). */
void cli_progress_end(void);

#endif
