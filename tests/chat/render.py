#!/usr/bin/env python3
# render.py TEMPLATE CONVERSATIONS.json (or --snippets FILE.json): renders
# every case of the file with Python's jinja2 in the environment Hugging Face's apply_chat_template
# uses (trim_blocks, lstrip_blocks, loop controls, tojson as json.dumps
# with ensure_ascii=False, raise_exception, strftime_now) and prints a JSON
# list: for each case {"ok": text} or {"error": message}. The reference
# the C renderer (src/chat_template.c) is compared with, byte for byte.
import json
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def render(env, src, ctx):
    try:
        return {"ok": env.from_string(src).render(**ctx)}
    except Exception as e:  # the C side must fail too
        return {"error": str(e)}


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    if sys.argv[1] == "--snippets":
        # render.py --snippets FILE.json: a list of {"t": template, "c": context}
        cases = json.load(open(sys.argv[2], encoding="utf-8"))
        out = [render(env, c["t"], c["c"]) for c in cases]
    else:
        src = open(sys.argv[1], encoding="utf-8").read()
        cases = json.load(open(sys.argv[2], encoding="utf-8"))
        out = [render(env, src, c) for c in cases]
    json.dump(out, sys.stdout, ensure_ascii=False)


main()
