/*
 * chat_template.h: the model's own chat template (`tokenizer.chat_template`,
 * Jinja) parsed once and rendered over a conversation.
 *
 * moeq interprets the subset of Jinja that chat templates use, with the
 * environment Hugging Face's apply_chat_template sets up (trim_blocks and
 * lstrip_blocks on, no autoescape, `tojson` as json.dumps with
 * ensure_ascii=False and keys in their given order, `raise_exception`,
 * `strftime_now`, loop controls). Statements: if/elif/else, for (with a
 * filter, else, tuple targets, loop.*), set (names and namespace
 * attributes, block set), macro, break/continue, generation (no-op).
 * Expressions: literals, lists, dicts, attribute/subscript/slice, calls,
 * filters, tests, arithmetic, comparisons, in, and/or/not, `a if c else b`.
 * A construct outside this subset fails at parse time with the line and
 * what was not understood, so an unsupported template is refused when the
 * model loads rather than rendered wrong.
 *
 * The context and every value are jansson values: the caller passes one
 * object (messages, tools, add_generation_prompt, bos_token, ... and any
 * chat_template_kwargs) and gets a malloc'd string back. Used by the
 * tokenizer/model layer and the server; nothing here touches tensors.
 */
#ifndef MOEQ_CHAT_TEMPLATE_H
#define MOEQ_CHAT_TEMPLATE_H

#include <jansson.h>
#include <stddef.h>

typedef struct moeq_tmpl moeq_tmpl;

/* Parse a template; NULL with err set ("line N: reason") on error. */
moeq_tmpl *moeq_tmpl_parse(const char *src, size_t len, char *err, size_t errlen);
/* Render with ctx (a JSON object, borrowed); malloc'd NUL-terminated text
 * (*out_len its length, may be NULL), or NULL with err set (a
 * raise_exception message, a type error, ...). */
char *moeq_tmpl_render(const moeq_tmpl *t, json_t *ctx, size_t *out_len, char *err, size_t errlen);
void moeq_tmpl_free(moeq_tmpl *t);

/* Python's json.dumps(v, ensure_ascii=False) (separators ", " and ": ",
 * indent >= 0 for indented output, < 0 for none); malloc'd. */
char *moeq_tmpl_tojson(json_t *v, int indent);

#endif
