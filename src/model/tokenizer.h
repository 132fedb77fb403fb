/*
 * tokenizer.h: the GPT-2 style byte-level BPE tokenizer that GGUF metadata
 * describes (tokenizer.ggml.model = "gpt2"), with the qwen2 pre-tokenizer,
 * and the chat template (Qwen ChatML) rendered natively.
 *
 * A tokenizer is immutable once built: every function below may be called
 * from several threads at once on the same tokenizer.
 *
 * Encoding follows the reference (llama.cpp's llama-vocab) step for step:
 * special tokens are split out of the text first (CONTROL tokens only when
 * the caller asks, USER_DEFINED tokens always), each remaining fragment is
 * split into words by the pre-tokenizer regex, each word's bytes are mapped
 * through the GPT-2 byte-to-unicode table and merged by rank. Invalid UTF-8
 * is accepted and kept byte for byte, so decode(encode(s)) == s for any s.
 */
#ifndef MOEQ_TOKENIZER_H
#define MOEQ_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "gguf/gguf.h"

typedef struct moeq_tokenizer moeq_tokenizer;

/* tokenizer.ggml.token_type values (as the GGUF converters write them). */
enum moeq_token_type {
    MOEQ_TOKEN_UNDEFINED    = 0,
    MOEQ_TOKEN_NORMAL       = 1,
    MOEQ_TOKEN_UNKNOWN      = 2,
    MOEQ_TOKEN_CONTROL      = 3,
    MOEQ_TOKEN_USER_DEFINED = 4,
    MOEQ_TOKEN_UNUSED       = 5,
    MOEQ_TOKEN_BYTE         = 6,
};

/* Chat template families rendered natively. */
enum moeq_chat_kind {
    MOEQ_CHAT_CHATML = 0,   /* <|im_start|>role\ncontent<|im_end|>\n for every message */
    MOEQ_CHAT_QWEN3  = 1,   /* ChatML plus Qwen3's <think> handling of assistant turns */
};

/*
 * An in-memory vocabulary: what the GGUF tokenizer.* keys hold. Strings
 * need not be NUL-terminated. Token ids are indices into tokens[].
 */
struct moeq_vocab_desc {
    const char     *model;      /* "gpt2" (NULL: "gpt2") */
    const char     *pre;        /* pre-tokenizer: "qwen2" (NULL: "qwen2") */
    int32_t         n_tokens;
    const gguf_str *tokens;
    const int32_t  *types;      /* enum moeq_token_type per token; NULL: all NORMAL */
    int32_t         n_merges;
    const gguf_str *merges;     /* "left right", rank = index */
    int32_t bos, eos, eot, eom, pad;   /* -1 when absent */
    int     add_bos;
    const char     *chat_template;     /* NUL-terminated; NULL when absent */
};

/* Build a tokenizer; NULL with a one-line message in err on bad input. */
moeq_tokenizer *moeq_tokenizer_new(const struct moeq_vocab_desc *d, char *err, size_t errlen);

/* Build from a GGUF file's tokenizer.* metadata (the file may be closed
 * afterwards: everything is copied). Errors name the file and the key. */
moeq_tokenizer *moeq_tokenizer_load(const gguf_file *f, char *err, size_t errlen);

void moeq_tokenizer_free(moeq_tokenizer *t);

/*
 * Tokenize len bytes of text (no BOS is added: see moeq_tokenizer_specials).
 * CONTROL tokens written in the text (e.g. "<|im_start|>") become their ids
 * only with parse_special; otherwise they are tokenized as plain text.
 * Writes at most max ids to out (out may be NULL when max is 0) and returns
 * the full count, which may exceed max: call again with a larger buffer.
 * Returns -1 only when len exceeds INT_MAX.
 */
int moeq_tokenizer_encode(const moeq_tokenizer *t, const char *text, size_t len,
                          int parse_special, int32_t *out, int max);

/*
 * The bytes a token stands for (not NUL-terminated). CONTROL and
 * USER_DEFINED tokens give their text, UNUSED tokens nothing. Returns the
 * length; when it exceeds cap nothing is written. -1 for an invalid id.
 */
int moeq_tokenizer_piece(const moeq_tokenizer *t, int32_t id, char *buf, int cap);

/* The same without copying: a pointer into the tokenizer (NULL, -1 when
 * the id is invalid). */
const char *moeq_tokenizer_piece_ref(const moeq_tokenizer *t, int32_t id, int *len);

int32_t moeq_tokenizer_n_vocab(const moeq_tokenizer *t);
int     moeq_tokenizer_token_type(const moeq_tokenizer *t, int32_t id); /* -1 if invalid */

struct moeq_token_specials {
    int32_t bos, eos, eot, pad;  /* -1 when absent */
    int     add_bos;
};
void moeq_tokenizer_specials(const moeq_tokenizer *t, struct moeq_token_specials *out);

/* Does this token end a generation (eos, eot, eom, <|im_end|>, <|endoftext|>...)? */
int moeq_tokenizer_is_eog(const moeq_tokenizer *t, int32_t id);

/* ---------------------------------------------------------------- chat */

/* Same layout as engine.h's struct moeq_chat_msg. */
struct moeq_tok_msg {
    const char *role;      /* system, user, assistant, tool */
    const char *content;   /* NULL is treated as "" */
};

/* Which family a Jinja template string belongs to. Returns 0 and sets
 * *kind when recognized, -1 when not (*kind is then MOEQ_CHAT_CHATML). */
int moeq_chat_detect(const char *tmpl, enum moeq_chat_kind *kind);

/*
 * Render messages as the template family does for a plain chat (no tools),
 * followed by "<|im_start|>assistant\n" when add_generation_prompt. Returns
 * a malloc'd NUL-terminated string, or NULL with err set (unknown role).
 */
char *moeq_chat_render_kind(enum moeq_chat_kind kind, const struct moeq_tok_msg *msgs, int n,
                            int add_generation_prompt, char *err, size_t errlen);

/* The same through the model's own template (tokenizer.chat_template,
 * parsed when the tokenizer is built: a template outside the supported
 * Jinja subset fails the load); absent: the built-in ChatML. */
char *moeq_tokenizer_chat_render(const moeq_tokenizer *t, const struct moeq_tok_msg *msgs, int n,
                                 int add_generation_prompt, char *err, size_t errlen);
enum moeq_chat_kind moeq_tokenizer_chat_kind(const moeq_tokenizer *t);
/* The tool-call syntax the template implies (enum moeq_chat_format of
 * chat_parse.h; PLAIN without a template). */
int moeq_tokenizer_chat_format(const moeq_tokenizer *t);

/* Render with a full template context (a JSON object, borrowed: messages,
 * tools, add_generation_prompt, chat_template_kwargs' keys...); bos_token
 * and eos_token are added from the vocabulary when ctx lacks them. */
char *moeq_tokenizer_chat_render_json(const moeq_tokenizer *t, json_t *ctx, char *err, size_t errlen);

#endif
