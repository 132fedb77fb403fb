/*
 * chat_parse.h: what a chat model's generated text means: reasoning
 * (<think>...</think>), content, and tool calls in the model family's
 * format, parsed incrementally so a streamed reply can be split as it is
 * generated.
 *
 * Formats: Qwen3 / Qwen3-2507 (`<tool_call>\n{"name": ..., "arguments":
 * {...}}\n</tool_call>`) and Qwen3-Coder (`<tool_call>\n<function=NAME>\n
 * <parameter=P>\nVALUE\n</parameter>\n</function>\n</tool_call>`). Text
 * that could still become a marker is held back until it can be decided,
 * so every split of the same text into pieces yields the same result. A
 * call that does not parse is returned as content (and counted in
 * `malformed` for the caller's log), never an error.
 *
 * Used by the server; pure text in, events out, no model.
 */
#ifndef MOEQ_CHAT_PARSE_H
#define MOEQ_CHAT_PARSE_H

#include <jansson.h>
#include <stddef.h>

enum moeq_chat_format { MOEQ_CALLS_PLAIN = 0, MOEQ_CALLS_QWEN3 = 1, MOEQ_CALLS_QWEN3_CODER = 2 };

/* One completed tool call. */
struct moeq_tool_call {
    char *name;
    char *arguments;   /* a JSON object as text */
};

/* What one feed produced: text appended to content and reasoning, and the
 * calls completed (the caller owns nothing: the parser keeps them until the
 * next feed or free). */
struct moeq_chat_delta {
    char *content;   size_t content_len;
    char *reasoning; size_t reasoning_len;
    int first_call, n_calls;   /* calls[first_call .. first_call + n_calls) completed now */
};

typedef struct moeq_chat_parser moeq_chat_parser;

/*
 * format: the tool-call syntax to recognise (PLAIN: none). reasoning: split
 * <think>...</think> into reasoning; think_open: the prompt already opened
 * the think block, so the reply starts inside it. tools: the request's
 * tools (borrowed, may be NULL), used to type Qwen3-Coder parameters (a
 * "string" parameter stays text; others are read as JSON when they parse).
 */
moeq_chat_parser *moeq_chat_parser_new(int format, int reasoning, int think_open, json_t *tools);
void moeq_chat_parser_free(moeq_chat_parser *p);

/* Feed generated text (any split); fills d. -1 on out of memory. */
int moeq_chat_parser_feed(moeq_chat_parser *p, const char *text, size_t n, struct moeq_chat_delta *d);
/* End of generation: flush what was held back (an unclosed call becomes content). */
int moeq_chat_parser_finish(moeq_chat_parser *p, struct moeq_chat_delta *d);

/* All calls so far, and the number of calls that did not parse. */
const struct moeq_tool_call *moeq_chat_parser_calls(const moeq_chat_parser *p, int *n);
int moeq_chat_parser_malformed(const moeq_chat_parser *p);

/* A request tool's function object: its "function" member, or the tool
 * itself when it has none (a bare {"name", "parameters"}). */
const json_t *moeq_chat_tool_function(const json_t *tool);

/* The format a chat template's text implies (its tool-call syntax). */
int moeq_chat_format_of_template(const char *tmpl);

#endif
