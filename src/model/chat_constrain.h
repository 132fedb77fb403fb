/*
 * chat_constrain.h: decoding constraints that force one complete tool call
 * in a chat model family's syntax (the formats of chat_parse.h), for
 * tool_choice "required" and a named function.
 *
 * The constraint is a byte-level automaton over the reply that follows the
 * forced opening (the server's prefill: Qwen3's "<tool_call>\n" or, for a
 * named function, up to the arguments' key; Coder's "<tool_call>\n" or
 * "<tool_call>\n<function=NAME>\n"). It accepts exactly the continuations
 * that can still end as a call chat_parse.h parses: a function name from
 * the request's tools, arguments that are one JSON object (Qwen3; its
 * top-level keys the function's declared properties when it declares any)
 * or <parameter=P> blocks naming declared properties (Coder), then the
 * closing tags. After the closing tag the constraint is done and accepts
 * anything. A sampler asks, for each candidate token's text, whether it
 * keeps the reply valid, masks the rest, and feeds the chosen token.
 *
 * Pure text, no model: used by the server's scheduler.
 */
#ifndef MOEQ_CHAT_CONSTRAIN_H
#define MOEQ_CHAT_CONSTRAIN_H

#include <jansson.h>
#include <stddef.h>

typedef struct moeq_call_con moeq_call_con;

/*
 * format: MOEQ_CALLS_QWEN3 or MOEQ_CALLS_QWEN3_CODER. tools: the request's
 * tools array (read now, not kept). name: the forced function, or NULL for
 * any of them. NULL for another format, no usable tool, or out of memory.
 */
moeq_call_con *moeq_call_con_new(int format, const json_t *tools, const char *name);
void moeq_call_con_free(moeq_call_con *c);

/* Would the reply stay valid with these bytes appended? (1 yes, 0 no).
 * Empty text makes no progress and is refused until the call is done. */
int moeq_call_con_allows(const moeq_call_con *c, const char *text, size_t n);
/* Append bytes to the reply (the chosen token's text): 1, or 0 (the bytes
 * broke the call; the constraint then accepts anything, as if done). */
int moeq_call_con_feed(moeq_call_con *c, const char *text, size_t n);
/* Has the call been closed? */
int moeq_call_con_done(const moeq_call_con *c);

#endif
