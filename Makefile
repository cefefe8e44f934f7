# Gateway build. `make` builds everything; `make deps` installs Debian packages;
# `make run` starts the stack; `make test` runs selftests and integration tests;
# `make asan` / `make test-asan` do the same with AddressSanitizer + UBSan.

CC ?= gcc
SANITIZE ?=
ifeq ($(SANITIZE),1)
  BIN := bin-asan
  OBJ := obj-asan
  OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
  BIN := bin
  OBJ := obj
  OPT := -O2 -g
endif

CFLAGS += -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror $(OPT) -Iproto -Ilib -I/usr/include/postgresql -MMD -MP
LDFLAGS += $(OPT)
LIBS := -lczmq -lzmq -lmicrohttpd -lcurl -ljansson -lmsgpackc -lpq -lsodium -lcrypto -lm -lpthread

LIB_SRC := $(wildcard lib/*.c) $(wildcard proto/*.c)
INGRESS_SRC := $(filter-out %/main.c,$(wildcard services/ingress/*.c))
DISPATCHER_SRC := $(filter-out %/main.c,$(wildcard services/dispatcher/*.c))
ACCOUNTING_SRC := $(filter-out %/main.c,$(wildcard services/accounting/*.c))
ALERTER_SRC := $(filter-out %/main.c,$(wildcard services/alerter/*.c))
MOCK_SRC := $(wildcard tools/mock-upstream/*.c)

obj_of = $(patsubst %.c,$(OBJ)/%.o,$(1))

PROGRAMS := $(BIN)/ingress $(BIN)/dispatcher $(BIN)/accounting $(BIN)/alerter $(BIN)/mock-upstream $(BIN)/usage-gen \
  $(BIN)/gw-report $(BIN)/gw-keys $(BIN)/gw-notify $(BIN)/gw-selftest

DEB_PACKAGES := build-essential pkg-config libczmq-dev libzmq3-dev libmicrohttpd-dev \
  libcurl4-openssl-dev libjansson-dev libmsgpack-dev libpq-dev libssl-dev libsodium-dev postgresql python3 curl \
  python3-aiosmtpd openssl faketime

.PHONY: all deps run test test-asan asan selftest fuzz bench bench-accounting clean
all: $(PROGRAMS)

$(OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The ingress can run a dispatcher on a thread (GW_LOCAL_DISPATCHER=1): it links
# the dispatcher's modules too.
$(BIN)/ingress: $(call obj_of,services/ingress/main.c $(INGRESS_SRC) $(DISPATCHER_SRC) $(LIB_SRC))
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BIN)/dispatcher: $(call obj_of,services/dispatcher/main.c $(DISPATCHER_SRC) $(LIB_SRC))
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BIN)/accounting: $(call obj_of,services/accounting/main.c $(ACCOUNTING_SRC) $(LIB_SRC))
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BIN)/usage-gen: $(call obj_of,tools/usage-gen/main.c services/dispatcher/usage_spool.c \
    services/dispatcher/usage_sender.c $(LIB_SRC))
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BIN)/gw-report: $(call obj_of,tools/gw-report/main.c $(LIB_SRC))
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BIN)/gw-keys: $(call obj_of,tools/gw-keys/main.c $(LIB_SRC))
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(OBJ)/tools/usage-gen/main.o: CFLAGS += -Iservices/dispatcher -Iservices/accounting
$(OBJ)/services/ingress/main.o: CFLAGS += -Iservices/dispatcher

$(BIN)/alerter: $(call obj_of,services/alerter/main.c $(ALERTER_SRC) $(LIB_SRC))
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BIN)/gw-notify: $(call obj_of,tools/gw-notify/main.c $(ALERTER_SRC) $(LIB_SRC))
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(OBJ)/tools/gw-notify/main.o: CFLAGS += -Iservices/alerter

$(BIN)/mock-upstream: $(call obj_of,$(MOCK_SRC))
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ -lmicrohttpd -ljansson -lpthread -lm

$(BIN)/gw-selftest: $(call obj_of,tests/selftest.c $(INGRESS_SRC) $(DISPATCHER_SRC) $(ACCOUNTING_SRC) $(ALERTER_SRC) \
    $(LIB_SRC))
	@mkdir -p $(BIN)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(OBJ)/tests/selftest.o: CFLAGS += -Iservices/ingress -Iservices/dispatcher -Iservices/accounting \
  -Iservices/alerter

# Installs only what is missing, so it is quick and quiet on a ready machine.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	else echo "deps: all Debian packages present"; fi
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm; }
	@# The official openai SDK, for the compatibility test (tests/test_sdk.py).
	@[ -d tests/sdk/node_modules/openai ] || (cd tests/sdk && npm ci --no-audit --no-fund --silent)

run: deps all
	@tools/run-stack

selftest: $(BIN)/gw-selftest $(BIN)/mock-upstream
	$(BIN)/gw-selftest
	$(BIN)/mock-upstream --selftest

test: deps all
	@python3 tests/run.py --bin $(BIN)

asan:
	$(MAKE) SANITIZE=1 all

test-asan: deps
	$(MAKE) SANITIZE=1 all
	@python3 tests/run.py --bin bin-asan

# The gateway beside the mock upstream, nginx and Portkey, and 10,000 concurrent streams
# (issue 6; bench/RESULTS.md). Installs nginx-light and, under bench/.peers/, the pinned
# Portkey when missing. About 10 minutes.
bench: all
	python3 bench/gateway.py

# Sustained durable usage events per second into PostgreSQL (bench/RESULTS.md).
bench-accounting: all
	python3 bench/accounting.py

# Coverage-guided fuzzing of the wire decoder (clang + libFuzzer, ASan, UBSan).
FUZZ_SECONDS ?= 60
fuzz:
	@mkdir -p bin-fuzz var/fuzz-corpus
	clang -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Iproto -Ilib \
	  tests/fuzz/fuzz_proto.c proto/gw_proto.c lib/gw_log.c -o bin-fuzz/fuzz_proto -lmsgpackc -lzmq
	bin-fuzz/fuzz_proto -max_total_time=$(FUZZ_SECONDS) var/fuzz-corpus

clean:
	rm -rf bin bin-asan bin-fuzz obj obj-asan

-include $(shell find obj obj-asan -name '*.d' 2>/dev/null)
