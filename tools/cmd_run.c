/*
 * cmd_run.c: `moeq run`, text generation on the CPU engine.
 *
 * With a prompt (-p or -f) it evaluates the prompt and streams the
 * continuation to stdout as tokens come; --chat wraps the prompt in the
 * model's chat template first; --dump-logits writes the logits of every
 * prompt position. Without a prompt it is an interactive multi-turn chat:
 * the conversation is re-rendered each turn and synced against the
 * session, so only the new turn is evaluated (prefix reuse). Ctrl-C stops
 * the answer being generated, not the program (a second Ctrl-C at the
 * input prompt, or end of input, ends it). Speeds go to stderr at the end.
 * Text goes out without NUL bytes (a byte token may stand for one); logits
 * that are not numbers stop generation with an error instead of a stream
 * of whatever the sampler makes of them.
 */
#include "cmd.h"
#include "engine/engine.h"
#include "util/outfile.h"
#include "quant/finite.h"
#include "quant/quants.h"
#include "util/util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *o)
{
    fprintf(o,
        "usage: moeq run -m FILE [-p TEXT | -f FILE] [options]\n"
        "\n"
        "Generate text. Without -p/-f: an interactive chat using the model's template.\n"
        "\n"
        "  -m, --model FILE      GGUF model\n"
        "  -p, --prompt TEXT     prompt\n"
        "  -f, --file FILE       read the prompt from FILE\n"
        "  -n, --n-predict N     tokens to generate (default 128; -1: until end or context full)\n"
        "  -c, --ctx-size N      context size (default 4096, at most the model's; 0: the model's)\n"
        "  -t, --threads N       threads (default: all cores)\n"
        "  -b, --batch-size N    prompt tokens per batch (default 512)\n"
        "  --temp T              temperature (default 0.8; 0: greedy)\n"
        "  --top-k N             top-k (default 40; 0: off)\n"
        "  --top-p P             top-p (default 0.95; 1: off)\n"
        "  --min-p P             min-p (default 0.05; 0: off)\n"
        "  --seed N              sampling seed (default: from the clock)\n"
        "  -ctk, --cache-type-k T  KV cache type of K: f16 (default) or q8_0\n"
        "  -ctv, --cache-type-v T  KV cache type of V: f16 (default) or q8_0\n"
        "  --chat                wrap the prompt in the chat template as a user message\n"
        "  --lookup              speculative decoding with drafts from n-grams of the prompt\n"
        "                        and output, in fewer forward passes: at --temp 0 the tokens\n"
        "                        are exactly plain greedy decoding's; at a temperature each\n"
        "                        draft is kept or redrawn by the accept/reject rule, so the\n"
        "                        output has plain sampling's distribution\n"
        "  -md, --model-draft FILE  speculative decoding with drafts from a small model with\n"
        "                        the same vocabulary (its greedy continuation), verified as\n"
        "                        --lookup's are: the same tokens, or the same distribution\n"
        "  --draft-max N         tokens drafted per step with --lookup or -md (default 8)\n"
        "  --dump-logits FILE    write the logits of every prompt position (little-endian\n"
        "                        f32, n_tokens x n_vocab)\n"
        "  -q, -v, --log-level L  quiet (no timings or notes on stderr), verbose, or\n"
        "                        error|warn|info|debug\n"
        "  -h, --help            this help\n");
}

static volatile sig_atomic_t g_generating, g_stop;

static void on_sigint(int sig)
{
    (void)sig;
    if (g_generating) {
        g_stop = 1;
    } else {
        static const char msg[] = "\n";
        ssize_t r = write(2, msg, 1);
        (void)r;
        moeq_outfile_unlink_all(); /* a --dump-logits in progress leaves nothing */
        _exit(130);
    }
}

struct stats {
    long   n_prompt, n_gen;
    double t_prompt, t_gen;
};

struct run {
    moeq_engine        *e;
    moeq_session       *s;
    moeq_engine        *de;   /* -md: the draft model, and its session */
    moeq_session       *ds;
    struct moeq_sampler sp;
    struct stats        st;
    int                 n_predict;
    char                err[512];
};

/* Tokenize text (+ BOS when the model wants it); malloc'd, count in *n. */
static int32_t *tokenize(struct run *r, const char *text, size_t len, int add_bos, int *n)
{
    const struct moeq_model_info *in = moeq_engine_info(r->e);
    int k = moeq_tokenize(r->e, text, len, 1, NULL, 0);
    if (k < 0) return NULL;
    int extra = add_bos && in->add_bos && in->bos >= 0;
    int32_t *t = malloc(((size_t)k + 1) * sizeof *t);
    if (!t) return NULL;
    if (extra) t[0] = in->bos;
    moeq_tokenize(r->e, text, len, 1, t + extra, k);
    *n = k + extra;
    return t;
}

/* Evaluate tokens[0..n) after syncing the session to them (prefix reuse). */
static int eval_prompt(struct run *r, const int32_t *tok, int n)
{
    int kept = moeq_session_sync(r->s, tok, n);
    double t0 = moeq_now_s();
    if (moeq_session_eval(r->s, tok + kept, n - kept, NULL, r->err, sizeof r->err) != 0) return -1;
    r->st.t_prompt += moeq_now_s() - t0;
    r->st.n_prompt += n - kept;
    return 0;
}

/* Remove the NUL bytes of s[0..n) in place (they are not text, and a
 * terminal or a pipe reading lines would mangle them); the new length. */
static size_t drop_nul(char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i]) s[k++] = s[i];
    return k;
}

/* Print token t's text (NUL bytes dropped); appended to *answer when
 * non-NULL. */
static void emit_token(struct run *r, int32_t t, char **answer, size_t *alen)
{
    char piece[256];
    int k = moeq_token_piece(r->e, t, piece, (int)sizeof piece);
    if (k <= 0 || k > (int)sizeof piece) return;
    k = (int)drop_nul(piece, (size_t)k);
    fwrite(piece, 1, (size_t)k, stdout);
    fflush(stdout);
    if (!answer) return;
    char *na = realloc(*answer, *alen + (size_t)k + 1);
    if (!na) return;
    memcpy(na + *alen, piece, (size_t)k);
    *alen += (size_t)k;
    na[*alen] = 0;
    *answer = na;
}

/* Sample and stream up to n_predict tokens; the answer's text is appended
 * to *answer when non-NULL. Returns 0, or -1 on an engine error. */
static int generate(struct run *r, char **answer, size_t *alen)
{
    if (!g_generating) g_stop = 0;
    g_generating = 1;
    int rc = 0;
    double t0 = moeq_now_s();
    for (int i = 0; r->n_predict < 0 || i < r->n_predict; i++) {
        if (g_stop) break;
        const float *lg = moeq_session_logits(r->s);
        const int n_vocab = moeq_engine_info(r->e)->n_vocab;
        int64_t bad = moeq_first_nonfinite_f32(lg, n_vocab);
        if (bad >= 0) {
            snprintf(r->err, sizeof r->err, "run: generated token %d: logit of token %lld is not a number "
                     "(the model computes NaN or Inf; see moeq info --check)", i, (long long)bad);
            rc = -1;
            break;
        }
        int32_t t = moeq_sample(&r->sp, lg, n_vocab);
        if (moeq_token_is_eog(r->e, t)) break;
        emit_token(r, t, answer, alen);
        if (moeq_session_n_past(r->s) >= moeq_session_n_ctx(r->s)) {
            if (cli_log_level >= CLI_LOG_WARN)
                fprintf(stderr, "\nmoeq: context of %d tokens is full: stopped after %d generated token(s)%s\n",
                    moeq_session_n_ctx(r->s), i + 1, r->n_predict < 0 || i + 1 < r->n_predict ?
                    " (a larger -c gives room for more)" : "");
            break;
        }
        if (moeq_session_eval(r->s, &t, 1, NULL, r->err, sizeof r->err) != 0) { rc = -1; break; }
        r->st.n_gen++;
    }
    r->st.t_gen += moeq_now_s() - t0;
    g_generating = 0;
    return rc;
}

/* Prompt logits, every position, chunk by chunk, to path (never one of
 * inputs[0..n_inputs)). */
static int dump_logits(struct run *r, const int32_t *tok, int n, const char *path,
                       const char *const *inputs, int n_inputs)
{
    const int V = moeq_engine_info(r->e)->n_vocab;
    const int chunk = 64;
    moeq_outfile *o = moeq_outfile_open(path, inputs, n_inputs, r->err, sizeof r->err);
    if (!o) return -1;
    FILE *f = moeq_outfile_fp(o);
    float *buf = malloc((size_t)chunk * V * sizeof *buf);
    if (!buf) { moeq_outfile_abort(o); snprintf(r->err, sizeof r->err, "out of memory"); return -1; }
    moeq_session_sync(r->s, tok, 0);
    int rc = 0;
    double t0 = moeq_now_s();
    for (int done = 0; done < n && rc == 0;) {
        int c = n - done < chunk ? n - done : chunk;
        if (moeq_session_eval(r->s, tok + done, c, buf, r->err, sizeof r->err) != 0) rc = -1;
        else if (fwrite(buf, sizeof(float), (size_t)c * V, f) != (size_t)c * V) {
            moeq_outfile_failed(o, r->err, sizeof r->err);
            rc = -1;
        }
        done += c;
    }
    r->st.t_prompt += moeq_now_s() - t0;
    r->st.n_prompt += n;
    free(buf);
    if (rc != 0) moeq_outfile_abort(o);
    else rc = moeq_outfile_commit(o, r->err, sizeof r->err);
    return rc;
}

static void print_stats(const struct stats *st)
{
    if (cli_log_level < CLI_LOG_INFO) return;
    fprintf(stderr, "\nprompt: %ld tokens in %.2f s (%.2f tokens/s)\n", st->n_prompt, st->t_prompt,
            st->t_prompt > 0 ? st->n_prompt / st->t_prompt : 0.0);
    fprintf(stderr, "generation: %ld tokens in %.2f s (%.2f tokens/s)\n", st->n_gen, st->t_gen,
            st->t_gen > 0 ? st->n_gen / st->t_gen : 0.0);
}

/* One token of --lookup generation: printed unless it ends generation. */
static int print_token(void *ctx, int32_t t)
{
    struct run *r = ctx;
    if (g_stop) return 1;
    if (moeq_token_is_eog(r->e, t)) return 0;
    emit_token(r, t, NULL, NULL);
    r->st.n_gen++;
    return 0;
}

/* -md: the draft model, with the target's context and threads; its
 * vocabulary must be the target's, token for token. */
static int open_draft(struct run *r, const char *path, const struct moeq_engine_params *tp)
{
    struct moeq_engine_params p = *tp;
    p.model_path = path;
    r->de = moeq_engine_open(&p, r->err, sizeof r->err);
    if (!r->de) return -1;
    const struct moeq_model_info *a = moeq_engine_info(r->e), *b = moeq_engine_info(r->de);
    if (a->n_vocab != b->n_vocab || !b->has_vocab) {
        snprintf(r->err, sizeof r->err, "%s: the draft model's vocabulary (%d tokens) is not the model's (%d)", path,
                 b->n_vocab, a->n_vocab);
        return -1;
    }
    for (int32_t t = 0; t < a->n_vocab; t++) {
        char x[256], y[256];
        int nx = moeq_token_piece(r->e, t, x, sizeof x), ny = moeq_token_piece(r->de, t, y, sizeof y);
        if (nx != ny || (nx > 0 && memcmp(x, y, (size_t)(nx < (int)sizeof x ? nx : (int)sizeof x)))) {
            snprintf(r->err, sizeof r->err, "%s: the draft model's token %d differs from the model's", path, (int)t);
            return -1;
        }
    }
    r->ds = moeq_session_new(r->de, r->err, sizeof r->err);
    return r->ds ? 0 : -1;
}

/* --lookup or -md: generation with drafts verified in batches. */
static int generate_spec(struct run *r, const int32_t *tok, int n, int draft_max, moeq_session *draft)
{
    struct moeq_spec_opts o = { .lookup = !draft, .draft_max = draft_max, .ngram_min = 1, .ngram_max = 3,
                                .sampler = &r->sp, .draft = draft };
    struct moeq_spec_stats st;
    g_stop = 0;
    g_generating = 1;
    double t0 = moeq_now_s();
    int rc = moeq_generate(r->e, r->s, tok, n, r->n_predict, &o, print_token, r, &st, r->err, sizeof r->err);
    r->st.t_gen += moeq_now_s() - t0;
    g_generating = 0;
    if (cli_log_level >= CLI_LOG_INFO)
        fprintf(stderr, "\n%s: %d verification steps, %d of %d drafted tokens accepted (%.2f tokens per step)\n",
            draft ? "draft model" : "lookup", st.steps, st.accepted, st.drafted, st.steps ? (double)r->st.n_gen / st.steps : 0.0);
    if (rc == 0 && st.ctx_full)
        fprintf(stderr, "moeq: context of %d tokens is full: stopped after %ld generated token(s)%s\n",
                moeq_session_n_ctx(r->s), r->st.n_gen, r->n_predict < 0 || r->st.n_gen < r->n_predict ?
                " (a larger -c gives room for more)" : "");
    return rc;
}

/* Interactive chat: history re-rendered every turn; the session keeps the
 * common prefix. */
static int chat_loop(struct run *r)
{
    struct moeq_chat_msg *msgs = NULL;
    int n_msgs = 0, rc = 0;
    char line[8192];
    fprintf(stderr, "moeq chat: type a message, Ctrl-C stops an answer, Ctrl-D quits.\n");
    for (;;) {
        fprintf(stderr, "\n> ");
        if (!fgets(line, sizeof line, stdin)) break;
        size_t L = strlen(line);
        while (L && (line[L - 1] == '\n' || line[L - 1] == '\r')) line[--L] = 0;
        if (!L) continue;
        struct moeq_chat_msg *nm = realloc(msgs, (size_t)(n_msgs + 2) * sizeof *nm);
        char *content = strdup(line);
        if (!nm || !content) { free(content); if (nm) msgs = nm; rc = 1; cli_error("out of memory"); break; }
        msgs = nm;
        msgs[n_msgs].role = "user";
        msgs[n_msgs].content = content;
        n_msgs++;
        char *text = moeq_chat_render(r->e, msgs, n_msgs, 1, r->err, sizeof r->err);
        if (!text) { cli_error("%s", r->err); rc = 1; break; }
        int n = 0;
        int32_t *tok = tokenize(r, text, strlen(text), 1, &n);
        free(text);
        if (!tok) { cli_error("tokenization failed"); rc = 1; break; }
        if (n >= moeq_session_n_ctx(r->s)) {
            free(tok);
            cli_error("the conversation (%d tokens) does not fit the context of %d; start anew with a larger -c",
                      n, moeq_session_n_ctx(r->s));
            rc = 1;
            break;
        }
        /* Ctrl-C while the turn is read in stops this answer too */
        g_stop = 0;
        g_generating = 1;
        int erc = eval_prompt(r, tok, n);
        free(tok);
        if (erc != 0) { cli_error("%s", r->err); rc = 1; break; }
        char *answer = NULL;
        size_t alen = 0;
        if (!g_stop && generate(r, &answer, &alen) != 0) { free(answer); cli_error("%s", r->err); rc = 1; break; }
        g_generating = 0;
        putchar('\n');
        msgs[n_msgs].role = "assistant";
        msgs[n_msgs].content = answer ? answer : strdup("");
        n_msgs++;
    }
    for (int i = 0; i < n_msgs; i++) free((void *)msgs[i].content);
    free(msgs);
    return rc;
}

int cmd_run(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *file = NULL, *dump = NULL, *draft_model = NULL;
    int64_t n_predict = 128, n_ctx = 4096, n_threads = 0, n_batch = 512, top_k = 40, seed = -1;
    double temp = 0.8, top_p = 0.95, min_p = 0.05;
    int tk = MOEQ_KV_F16, tv = MOEQ_KV_F16, chat = 0, ctx_given = 0, lookup = 0;
    int64_t draft_max = 8;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); return 0; }
        CLI_LOG_OPTION("run", argc, argv, i);
        if (!strcmp(a, "--chat")) { chat = 1; continue; }
        if (!strcmp(a, "--lookup")) { lookup = 1; continue; }
        if (i + 1 >= argc) return cli_usage_error("run", "option %s needs a value", a);
        const char *v = argv[++i];
        int bad = 0, kv;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = v;
        else if (!strcmp(a, "--dump-logits")) dump = v;
        else if (!strcmp(a, "-md") || !strcmp(a, "--model-draft")) draft_model = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) bad = cli_parse_i64(v, &n_predict) || n_predict < -1 || n_predict > (1 << 30);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) { bad = cli_parse_i64(v, &n_ctx) || n_ctx < 0 || n_ctx > (1 << 24); ctx_given = 1; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) bad = cli_parse_i64(v, &n_threads) || n_threads < 0 || n_threads > 1024;
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch-size")) bad = cli_parse_i64(v, &n_batch) || n_batch < 1 || n_batch > 65536;
        else if (!strcmp(a, "--top-k")) bad = cli_parse_i64(v, &top_k) || top_k < 0;
        else if (!strcmp(a, "--seed")) bad = cli_parse_i64(v, &seed);
        else if (!strcmp(a, "--draft-max")) bad = cli_parse_i64(v, &draft_max) || draft_max < 1 || draft_max > 64;
        else if (!strcmp(a, "--temp")) bad = cli_parse_f64(v, &temp) || temp < 0;
        else if (!strcmp(a, "--top-p")) bad = cli_parse_f64(v, &top_p) || top_p < 0 || top_p > 1;
        else if (!strcmp(a, "--min-p")) bad = cli_parse_f64(v, &min_p) || min_p < 0 || min_p > 1;
        else if ((kv = cli_kv_option(a, v, &tk, &tv)) != 0) bad = kv < 0;
        else return cli_usage_error("run", "unknown option %s", a);
        if (bad) return cli_usage_error("run", "bad value '%s' for %s", v, a);
    }
    if (!model) return cli_usage_error("run", "-m FILE is required");
    if (prompt && file) return cli_usage_error("run", "give -p or -f, not both");
    if (dump && !prompt && !file) return cli_usage_error("run", "--dump-logits needs a prompt (-p or -f)");
    if (lookup && !prompt && !file) return cli_usage_error("run", "--lookup needs a prompt (-p or -f)");
    if (draft_model && !prompt && !file) return cli_usage_error("run", "-md needs a prompt (-p or -f)");
    if (draft_model && lookup) return cli_usage_error("run", "give --lookup or -md, not both");
    const char *inputs[] = { model, file };
    if (dump) {
        char cerr[512];
        if (moeq_outfile_check(dump, inputs, 2, cerr, sizeof cerr) != 0) { cli_error("run: %s", cerr); return 1; }
    }

    char *text = NULL;
    size_t tlen = 0;
    if (file) {
        char err[512];
        text = cli_read_file(file, &tlen, err, sizeof err);
        if (!text) { cli_error("%s", err); return 1; }
    } else if (prompt) {
        text = strdup(prompt);
        tlen = strlen(prompt);
    }

    struct run r;
    memset(&r, 0, sizeof r);
    struct moeq_engine_params p = { .model_path = model, .n_threads = (int)n_threads,
                                    .n_ctx = (int)n_ctx, .n_seq = 1, .type_k = tk, .type_v = tv,
                                    .n_batch = (int)n_batch };
    r.e = moeq_engine_open(&p, r.err, sizeof r.err);
    if (r.e && !ctx_given && moeq_engine_info(r.e)->n_ctx_train < p.n_ctx) {
        /* the default 4096 never exceeds what the model was trained for */
        p.n_ctx = moeq_engine_info(r.e)->n_ctx_train;
        moeq_engine_close(r.e);
        r.e = moeq_engine_open(&p, r.err, sizeof r.err);
    }
    if (!r.e) { free(text); cli_error("%s", r.err); return 1; }
    if (ctx_given && moeq_engine_info(r.e)->n_ctx_train > 0 && n_ctx > moeq_engine_info(r.e)->n_ctx_train)
        cli_warn("warning: -c %lld exceeds the model's training context of %d tokens; "
                 "output past it may degrade", (long long)n_ctx, moeq_engine_info(r.e)->n_ctx_train);
    int rc = 0;
    int32_t *tok = NULL;
    if (!moeq_engine_info(r.e)->has_vocab) { cli_error("%s: the model has no tokenizer", model); rc = 1; goto out; }
    r.s = moeq_session_new(r.e, r.err, sizeof r.err);
    if (!r.s) { cli_error("%s", r.err); rc = 1; goto out; }
    r.n_predict = (int)n_predict;
    r.sp.temp = (float)temp;
    r.sp.top_k = (int)top_k;
    r.sp.top_p = (float)top_p;
    r.sp.min_p = (float)min_p;
    r.sp.rng = seed >= 0 ? (uint64_t)seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    if (!text) {
        rc = chat_loop(&r);
        print_stats(&r.st);
        goto out;
    }
    if (chat) {
        struct moeq_chat_msg m = { "user", text };
        char *rendered = moeq_chat_render(r.e, &m, 1, 1, r.err, sizeof r.err);
        if (!rendered) { cli_error("%s", r.err); rc = 1; goto out; }
        free(text);
        text = rendered;
        tlen = strlen(text);
    }
    int n = 0;
    tok = tokenize(&r, text, tlen, 1, &n);
    if (!tok) { cli_error("tokenization failed"); rc = 1; goto out; }
    if (n == 0) { cli_error("the prompt is empty"); rc = 1; goto out; }
    if (n > moeq_session_n_ctx(r.s)) {
        cli_error("the prompt has %d tokens, more than the context of %d (use -c)", n, moeq_session_n_ctx(r.s));
        rc = 1;
        goto out;
    }
    if (dump) {
        if (dump_logits(&r, tok, n, dump, inputs, 2) != 0) { cli_error("%s", r.err); rc = 1; goto out; }
    } else if (eval_prompt(&r, tok, n) != 0) {
        cli_error("%s", r.err);
        rc = 1;
        goto out;
    }
    if (!chat) { fwrite(text, 1, drop_nul(text, tlen), stdout); fflush(stdout); }
    if ((lookup || draft_model) && n_predict != 0) {
        if (draft_model && open_draft(&r, draft_model, &p) != 0) { cli_error("%s", r.err); rc = 1; goto out; }
        if (generate_spec(&r, tok, n, (int)draft_max, r.ds) != 0) { cli_error("%s", r.err); rc = 1; }
    } else if (n_predict != 0 && generate(&r, NULL, NULL) != 0) {
        cli_error("%s", r.err);
        rc = 1;
    }
    putchar('\n');
    print_stats(&r.st);
out:
    free(tok);
    free(text);
    moeq_sampler_free(&r.sp);
    moeq_session_free(r.s);
    moeq_engine_close(r.e);
    moeq_session_free(r.ds);
    moeq_engine_close(r.de);
    return rc;
}
