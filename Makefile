# moeq build. One binary (./moeq), one test runner (build/*/moeq-tests),
# a release build and an ASan+UBSan build of both.
#
#   make            build ./moeq
#   make test       build and run every test, release and ASan+UBSan
#   make demo       the pipeline on an embedded default
#   make fuzz       time-bounded libFuzzer runs (GGUF, imatrix, Hessian, tokenizer, server, tool-call constraint)
#   make deps       install the Debian packages the build needs (root)
#   make install    binary, man page and bash completion under PREFIX

CC      ?= cc
FUZZCC  ?= clang
CSTD     = -std=c11 -D_GNU_SOURCE
WARN     = -Wall -Wextra -Werror
OPT     ?= -O2
CFLAGS_COMMON = $(CSTD) $(WARN) -g -pthread -Isrc -Ibuild $(shell pkg-config --cflags libpcre2-8 libmicrohttpd jansson 2>/dev/null)
LDLIBS   = -lpcre2-8 -lmicrohttpd -ljansson -lm -lpthread

# Per-ISA kernel files (names ending in _avx2 / _avx512) are compiled with
# their own target flags; everything else stays baseline x86-64 so the
# binary runs anywhere and picks kernels at run time.
ISA_avx2   = -mavx2 -mfma -mf16c
ISA_avx512 = -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16
ISA_FLAGS  = $(ISA_$(lastword $(subst _, ,$(basename $(notdir $<)))))

SRC_LIB   = $(wildcard src/*/*.c)
SRC_TOOLS = $(filter-out tools/moeq.c,$(wildcard tools/*.c))
SRC_TESTS = $(wildcard tests/*.c)
HDRS      = $(wildcard src/*/*.h tools/*.h tests/*.h)

REL  = build/release
ASAN = build/asan

OBJ_REL_LIB    = $(patsubst %.c,$(REL)/%.o,$(SRC_LIB) $(SRC_TOOLS))
OBJ_ASAN_LIB   = $(patsubst %.c,$(ASAN)/%.o,$(SRC_LIB) $(SRC_TOOLS))
OBJ_REL_TESTS  = $(patsubst %.c,$(REL)/%.o,$(SRC_TESTS))
OBJ_ASAN_TESTS = $(patsubst %.c,$(ASAN)/%.o,$(SRC_TESTS))

# float-cast-overflow: gcc leaves it out of "undefined" (clang does not);
# a cast of NaN or of an out-of-range float to an integer is undefined.
SAN = -fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer \
      -fno-sanitize-recover=undefined,float-cast-overflow

# The version lives in VERSION; the commit comes from git at build time.
# build/version.h is rewritten only when either changes, so a plain rebuild
# recompiles nothing.
VERSION := $(shell cat VERSION)
COMMIT  := $(shell git describe --always --dirty --abbrev=12 --exclude='*' 2>/dev/null || echo unknown)
PREFIX  ?= /usr/local

build/version.h: FORCE
	@mkdir -p build
	@printf '#define MOEQ_VERSION "%s"\n#define MOEQ_COMMIT "%s"\n' '$(VERSION)' '$(COMMIT)' > $@.new
	@cmp -s $@.new $@ && rm -f $@.new || mv $@.new $@

$(REL)/tools/moeq.o $(ASAN)/tools/moeq.o: build/version.h

.PHONY: check-fuzz-deps FORCE install all test test-release test-asan demo fuzz fuzz-build deps clean bench check-long check-deps

all: check-deps moeq

check-deps:
	@sh .ci/deps.sh --check

moeq: $(REL)/tools/moeq.o $(OBJ_REL_LIB)
	$(CC) $(CFLAGS_COMMON) $(OPT) -o $@ $^ $(LDLIBS)

$(REL)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(OPT) $(ISA_FLAGS) -c -o $@ $<

$(ASAN)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) -O1 $(SAN) $(ISA_FLAGS) -c -o $@ $<

$(REL)/moeq-tests: $(OBJ_REL_TESTS) $(OBJ_REL_LIB)
	$(CC) $(CFLAGS_COMMON) $(OPT) -o $@ $^ $(LDLIBS)

$(ASAN)/moeq: $(ASAN)/tools/moeq.o $(OBJ_ASAN_LIB)
	$(CC) $(CFLAGS_COMMON) $(SAN) -o $@ $^ $(LDLIBS)

# The corpus replay includes the harnesses.
$(REL)/tests/test_fuzz_corpus.o $(ASAN)/tests/test_fuzz_corpus.o: $(wildcard tests/fuzz/*.c tests/fuzz/*.h)

$(ASAN)/moeq-tests: $(OBJ_ASAN_TESTS) $(OBJ_ASAN_LIB)
	$(CC) $(CFLAGS_COMMON) $(SAN) -o $@ $^ $(LDLIBS)

test: check-deps moeq $(REL)/moeq-tests $(ASAN)/moeq $(ASAN)/moeq-tests
	@sh tests/run.sh

test-release: check-deps moeq $(REL)/moeq-tests
	@MOEQ_SUITES=release sh tests/run.sh

test-asan: check-deps $(ASAN)/moeq $(ASAN)/moeq-tests
	@MOEQ_SUITES=asan sh tests/run.sh

demo: check-deps moeq
	@sh tools/demo.sh

bench: check-deps moeq
	@sh bench/run_all.sh

check-long: check-deps moeq $(REL)/moeq-tests fuzz-build
	@MOEQ_LONG=1 MOEQ_FUZZ_SECONDS=$(FUZZ_LONG_SECONDS) MOEQ_SUITES=release sh tests/run.sh

# libFuzzer harnesses, one per tests/fuzz/fuzz_NAME.c, all built by the one
# rule below over the library compiled once with clang. `make fuzz` runs
# each of FUZZ_TARGETS for FUZZ_SECONDS, `make fuzz-NAME` one of them. No
# sanitizer report recovers (UBSan included), so any finding stops the run
# with a non-zero exit and leaves the input as build/fuzz/NAME/crash-*.
# Seeds: tests/fuzz/corpus_NAME (and tests/corpus for gguf), replayed by
# `make test` (tests/test_fuzz_corpus.c); what a run discovers goes to
# build/fuzz/NAME/corpus. check-long runs each for FUZZ_LONG_SECONDS.
FUZZ_SECONDS ?= 60
FUZZ_LONG_SECONDS ?= 30
FUZZ_TARGETS = gguf imatrix hessian tokenizer server callcon
FUZZ_SEEDS_gguf = tests/corpus
FUZZ_SAN = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS = $(CFLAGS_COMMON) -O1 $(FUZZ_SAN)
FUZZ_LIB = $(patsubst %.c,build/fuzz/obj/%.o,$(filter-out src/%_avx2.c src/%_avx512.c,$(SRC_LIB)))
FUZZ_BINS = $(patsubst tests/fuzz/%.c,build/fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
# made through pattern rules only: keep them (make deletes intermediates)
.SECONDARY: $(FUZZ_LIB) $(FUZZ_BINS)
# clang and its libFuzzer runtime: installed as root, else named in one error
$(FUZZ_LIB): | check-fuzz-deps
check-fuzz-deps:
	@sh .ci/deps.sh --fuzz

build/fuzz/obj/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(FUZZCC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_LIB)
	$(FUZZCC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB) $(LDLIBS)

fuzz: $(addprefix fuzz-,$(FUZZ_TARGETS))

fuzz-%: build/fuzz/fuzz_%
	@mkdir -p build/fuzz/$*/corpus
	$< -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=60 -print_final_stats=1 \
	    -artifact_prefix=build/fuzz/$*/ build/fuzz/$*/corpus tests/fuzz/corpus_$* $(FUZZ_SEEDS_$*)

fuzz-build: $(FUZZ_BINS)

deps:
	@sh .ci/deps.sh --install

# Man page and bash completion are generated from the binary's own --help
# texts, so they cannot drift from the flags it parses.
build/doc/moeq.1 build/doc/moeq.bash: moeq tools/gen_docs.sh
	@sh tools/gen_docs.sh ./moeq build/doc

install: moeq build/doc/moeq.1 build/doc/moeq.bash
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	    $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/doc/moeq
	install -m 755 moeq $(DESTDIR)$(PREFIX)/bin/moeq
	install -m 644 build/doc/moeq.1 $(DESTDIR)$(PREFIX)/share/man/man1/moeq.1
	install -m 644 build/doc/moeq.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/moeq
	install -m 644 LICENSE README.md $(DESTDIR)$(PREFIX)/share/doc/moeq/

clean:
	rm -rf build moeq
