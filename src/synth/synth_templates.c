/*
 * synth_templates.c: the chat templates `moeq synth --chat-template` writes
 * into tokenizer.chat_template, by name.
 *
 * chatml is plain ChatML (no tools, no thinking), the default. qwen3,
 * qwen3-2507 and qwen3-coder are moeq's own templates in the chat formats
 * of those model families: the same turn markers, <think> handling, tool
 * listing, tool-call syntax (JSON in <tool_call> for Qwen3 and Qwen3-2507,
 * <function=NAME><parameter=P> for Qwen3-Coder) and <tool_response> turns,
 * so a synth model exercises the server's tool calling and reasoning paths
 * as the real models do; only the wording of the tool instructions is
 * moeq's. tests/test_chat_template.c renders each against Python's jinja2,
 * and, where ../shared has the official templates, checks that they render
 * every conversation without tools to the same bytes as the official ones.
 */
#include "synth/synth.h"

#include <stddef.h>
#include <string.h>

/* Each message as <|im_start|>role\ncontent<|im_end|>\n, and the assistant
 * header when a reply is wanted. */
static const char tmpl_chatml[] =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}";

/* The parts the Qwen3 and Qwen3-2507 templates share: the system turn
 * (with the tool list) and, inside the message loop, an assistant turn's
 * tool calls and the tool turns. */
#define QWEN3_SYSTEM \
    "{%- set has_sys = messages and messages[0].role == 'system' %}\n" \
    "{%- if tools %}\n" \
    "    {{- '<|im_start|>system\\n' }}\n" \
    "    {%- if has_sys %}\n" \
    "        {{- messages[0].content + '\\n\\n' }}\n" \
    "    {%- endif %}\n" \
    "    {{- '# Tools\\n\\nThe functions below are available; each line inside <tools></tools> is one signature in JSON:\\n<tools>' }}\n" \
    "    {%- for t in tools %}\n" \
    "        {{- '\\n' + (t | tojson) }}\n" \
    "    {%- endfor %}\n" \
    "    {{- '\\n</tools>\\n\\nTo call a function, answer with a JSON object holding its name and arguments between <tool_call></tool_call> tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}\n" \
    "{%- elif has_sys %}\n" \
    "    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n" \
    "{%- endif %}\n"

#define QWEN3_TOOL_TURNS \
    "        {%- if m.tool_calls %}\n" \
    "            {%- for c in m.tool_calls %}\n" \
    "                {%- set f = c.function if c.function else c %}\n" \
    "                {%- if text or not loop.first %}\n" \
    "                    {{- '\\n' }}\n" \
    "                {%- endif %}\n" \
    "                {{- '<tool_call>\\n{\"name\": \"' + f.name + '\", \"arguments\": ' }}\n" \
    "                {{- f.arguments if f.arguments is string else f.arguments | tojson }}\n" \
    "                {{- '}\\n</tool_call>' }}\n" \
    "            {%- endfor %}\n" \
    "        {%- endif %}\n" \
    "        {{- '<|im_end|>\\n' }}\n" \
    "    {%- elif m.role == 'tool' %}\n" \
    "        {%- if loop.first or loop.previtem.role != 'tool' %}\n" \
    "            {{- '<|im_start|>user' }}\n" \
    "        {%- endif %}\n" \
    "        {{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}\n" \
    "        {%- if loop.last or loop.nextitem.role != 'tool' %}\n" \
    "            {{- '<|im_end|>\\n' }}\n" \
    "        {%- endif %}\n" \
    "    {%- endif %}\n" \
    "{%- endfor %}\n"

static const char tmpl_qwen3[] =
    "{#- moeq's Qwen3 template (hybrid thinking, JSON tool calls). -#}\n"
    QWEN3_SYSTEM
    "{#- Thinking is shown again only for the turns after the last real user query. #}\n"
    "{%- set ns = namespace(query=messages|length - 1, seen=false) %}\n"
    "{%- for m in messages %}\n"
    "    {%- if m.role == 'user' and not (m.content.startswith('<tool_response>') and m.content.endswith('</tool_response>')) %}\n"
    "        {%- set ns.query = loop.index0 %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- for m in messages %}\n"
    "    {%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}\n"
    "        {{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}\n"
    "    {%- elif m.role == 'assistant' %}\n"
    "        {%- set text = m.content if m.content is string else '' %}\n"
    "        {%- set think = '' %}\n"
    "        {%- if m.reasoning_content is string %}\n"
    "            {%- set think = m.reasoning_content %}\n"
    "        {%- elif '</think>' in text %}\n"
    "            {%- set think = text.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n"
    "            {%- set text = text.split('</think>')[-1].lstrip('\\n') %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_start|>assistant\\n' }}\n"
    "        {%- if loop.index0 > ns.query and (loop.last or think) %}\n"
    "            {{- '<think>\\n' + think.strip('\\n') + '\\n</think>\\n\\n' + text.lstrip('\\n') }}\n"
    "        {%- else %}\n"
    "            {{- text }}\n"
    "        {%- endif %}\n"
    QWEN3_TOOL_TURNS
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}";

static const char tmpl_qwen3_2507[] =
    "{#- moeq's Qwen3-2507 Instruct template (no thinking, JSON tool calls). -#}\n"
    QWEN3_SYSTEM
    "{%- for m in messages %}\n"
    "    {%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}\n"
    "        {{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}\n"
    "    {%- elif m.role == 'assistant' %}\n"
    "        {%- set text = m.content if m.content is string else '' %}\n"
    "        {%- if '</think>' in text %}\n"
    "            {%- set text = text.split('</think>')[-1].lstrip('\\n') %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_start|>assistant\\n' + text }}\n"
    QWEN3_TOOL_TURNS
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}";

static const char tmpl_qwen3_coder[] =
    "{#- moeq's Qwen3-Coder template (XML tool calls: <function=NAME><parameter=P>). -#}\n"
    "{%- macro value_text(v) %}\n"
    "    {%- if v is mapping or (v is sequence and v is not string) %}\n"
    "        {{- v | tojson }}\n"
    "    {%- else %}\n"
    "        {{- v | string }}\n"
    "    {%- endif %}\n"
    "{%- endmacro %}\n"
    "{%- set has_sys = messages and messages[0].role == 'system' %}\n"
    "{%- set turns = messages[1:] if has_sys else messages %}\n"
    "{%- set has_tools = tools is defined and tools is iterable and tools | length > 0 %}\n"
    "{%- if has_sys %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0].content }}\n"
    "{%- elif has_tools %}\n"
    "    {{- '<|im_start|>system\\nYou are a helpful assistant that solves tasks with the tools below.' }}\n"
    "{%- endif %}\n"
    "{%- if has_tools %}\n"
    "    {{- '\\n\\n# Tools\\n\\nAvailable tools:\\n\\n<tools>' }}\n"
    "    {%- for t in tools %}\n"
    "        {%- set f = t.function if t.function is defined else t %}\n"
    "        {{- '\\n<function>\\n<name>' ~ f.name ~ '</name>' }}\n"
    "        {%- if f.description is defined %}\n"
    "            {{- '\\n<description>' ~ (f.description | trim) ~ '</description>' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<parameters>' }}\n"
    "        {%- if f.parameters is defined and f.parameters is mapping and f.parameters.properties is defined and f.parameters.properties is mapping %}\n"
    "            {%- for pname, p in f.parameters.properties | items %}\n"
    "                {{- '\\n<parameter>\\n<name>' ~ pname ~ '</name>' }}\n"
    "                {%- if p.type is defined %}\n"
    "                    {{- '\\n<type>' ~ (p.type | string) ~ '</type>' }}\n"
    "                {%- endif %}\n"
    "                {%- if p.description is defined %}\n"
    "                    {{- '\\n<description>' ~ (p.description | trim) ~ '</description>' }}\n"
    "                {%- endif %}\n"
    "                {{- '\\n</parameter>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {%- if f.parameters is defined and f.parameters.required is defined %}\n"
    "            {{- '\\n<required>' ~ (f.parameters.required | tojson) ~ '</required>' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n</parameters>\\n</function>' }}\n"
    "    {%- endfor %}\n"
    "    {{- '\\n</tools>\\n\\nTo call a tool, reply with exactly this shape and nothing after it:\\n\\n<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parameter>\\n</function>\\n</tool_call>\\n\\nGive every required parameter. Any explanation goes before the call, never after.' }}\n"
    "{%- endif %}\n"
    "{%- if has_sys or has_tools %}\n"
    "    {{- '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for m in turns %}\n"
    "    {%- if m.role == 'assistant' and m.tool_calls is defined and m.tool_calls is iterable and m.tool_calls | length > 0 %}\n"
    "        {{- '<|im_start|>assistant' }}\n"
    "        {%- if m.content is string and m.content | trim | length > 0 %}\n"
    "            {{- '\\n' + m.content | trim + '\\n' }}\n"
    "        {%- endif %}\n"
    "        {%- for c in m.tool_calls %}\n"
    "            {%- set f = c.function if c.function is defined else c %}\n"
    "            {{- '\\n<tool_call>\\n<function=' + f.name + '>\\n' }}\n"
    "            {%- if f.arguments is defined %}\n"
    "                {%- for aname, aval in f.arguments | items %}\n"
    "                    {{- '<parameter=' + aname + '>\\n' + value_text(aval) + '\\n</parameter>\\n' }}\n"
    "                {%- endfor %}\n"
    "            {%- endif %}\n"
    "            {{- '</function>\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif m.role == 'tool' %}\n"
    "        {%- if loop.first or loop.previtem.role != 'tool' %}\n"
    "            {{- '<|im_start|>user\\n' }}\n"
    "        {%- endif %}\n"
    "        {{- '<tool_response>\\n' + m.content + '\\n</tool_response>\\n' }}\n"
    "        {%- if loop.last or loop.nextitem.role != 'tool' %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}";

static const struct moeq_synth_template templates[] = {
    { "chatml",      "plain ChatML, no tools (default)",               tmpl_chatml },
    { "qwen3",       "Qwen3: thinking, JSON tool calls",               tmpl_qwen3 },
    { "qwen3-2507",  "Qwen3-2507 Instruct: no thinking, JSON tool calls", tmpl_qwen3_2507 },
    { "qwen3-coder", "Qwen3-Coder: XML tool calls",                    tmpl_qwen3_coder },
};

const struct moeq_synth_template *moeq_synth_templates(int *n)
{
    *n = (int)(sizeof templates / sizeof templates[0]);
    return templates;
}

const char *moeq_synth_template_named(const char *name)
{
    for (size_t i = 0; i < sizeof templates / sizeof templates[0]; i++)
        if (!strcmp(templates[i].name, name)) return templates[i].text;
    return NULL;
}
