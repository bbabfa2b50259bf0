# kubechat developer entry points. `make demo` and `make test` are the README's first lines.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
export TIKTOKEN_CACHE_DIR ?= $(CURDIR)/.cache/tiktoken
# The images carry tiktoken's encodings: this local copy when there is one, else they are fetched once from
# $KUBECHAT_TIKTOKEN_MIRROR (default: tiktoken's public location) and checked (localcluster/encodings.py).
ifneq ($(wildcard $(SHARED)/tiktoken/*.tiktoken),)
export KUBECHAT_TIKTOKEN_DIR ?= $(abspath $(SHARED)/tiktoken)
endif

.PHONY: setup run serve chat test lint cluster-up cluster-down cluster-shell crds demo demo-down node-deps test-deps

setup: $(VENV)/.installed $(TIKTOKEN_CACHE_DIR)/.seeded

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# tiktoken would download its encodings on first use; seed them from ../shared instead (no network).
$(TIKTOKEN_CACHE_DIR)/.seeded: $(VENV)/.installed
	@if [ -d $(SHARED)/tiktoken ]; then $(BIN)/kubechat seed-encodings --from $(SHARED)/tiktoken --to $(TIKTOKEN_CACHE_DIR) >/dev/null; \
	else echo "no $(SHARED)/tiktoken: tiktoken will download its encodings on first use"; mkdir -p $(TIKTOKEN_CACHE_DIR); fi
	touch $@

KUBECONFIG_LOCAL := $(CURDIR)/.local-cluster/kubeconfig

run: setup cluster-up crds  ## the operator on the local control plane (Ctrl-C stops it; `make cluster-down` the cluster)
	KUBECONFIG=$(KUBECONFIG_LOCAL) $(BIN)/kubechat-operator --liveness none

crds:
	KUBECONFIG=$(KUBECONFIG_LOCAL) kubectl apply --server-side -f crds/
	KUBECONFIG=$(KUBECONFIG_LOCAL) kubectl wait --for=condition=Established crd/chatbots.kubechat.dev --timeout=60s
	@# Established comes a moment before the API server can list the new kind; wait for that too.
	@for i in $$(seq 60); do KUBECONFIG=$(KUBECONFIG_LOCAL) kubectl get chatbots -A >/dev/null 2>&1 && break; sleep 0.5; done

serve: setup  ## one bot on http://127.0.0.1:8080 (settings from OPENAI_API_KEY, OPENAI_BASE_URL, KUBECHAT_*)
	$(BIN)/kubechat serve --host 127.0.0.1 --port 8080

chat: setup  ## chat with a bot in this terminal
	$(BIN)/kubechat chat

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint node-deps test-deps  ## lint, type-check and run every test (the cluster tests build what they need on first use)
	$(BIN)/pytest

# Local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) with kwok's
# fake nodes, or with NODE=real one real node (containerd, kubelet, kube-proxy) in a network namespace of its
# own: see docs/local-cluster.md. Binaries and images are built into ~/.cache/kubechat on first use.
LOCALCLUSTER := $(PYTHON) -m localcluster
NODE ?= kwok
# What a real node needs from Debian (nothing of it is started by installing it: no systemd here).
NODE_PACKAGES := containerd runc containernetworking-plugins iptables iproute2
# What builds its images (localcluster/images.py): mmdebstrap makes the Debian base, buildah runs the Dockerfiles.
IMAGE_PACKAGES := buildah mmdebstrap

# $(call debian,WHO,PACKAGES,APT FLAGS): install the Debian packages of PACKAGES that are missing (as root),
# or say in one line what to install. Installing them starts nothing (no systemd here).
debian = missing=""; for p in $(2); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "$(1) need (as root): apt-get install$$missing" >&2; exit 1; fi; \
	echo "installing$$missing"; apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(3) $$missing >/dev/null

node-deps:
	@$(call debian,the real node and its images,$(NODE_PACKAGES) $(IMAGE_PACKAGES),--no-install-recommends)

# What the tests run for real: Redis (session stores, shared limits), Chromium (the chat page, driven by
# Playwright from PyPI: its own browser download cannot work here and is never called), Prometheus (the
# dashboard's queries), Lua 5.1 (the Argo CD health check, Argo CD's dialect), jemalloc (the chatbot image's
# allocator, which the memory tests run the bot with).
TEST_PACKAGES := redis-server chromium prometheus lua5.1 libjemalloc2

test-deps:
	@$(call debian,the tests,$(TEST_PACKAGES),)

cluster-up: $(if $(filter real,$(NODE)),node-deps)
	$(LOCALCLUSTER) up --node $(NODE)

cluster-down:
	$(LOCALCLUSTER) down

cluster-shell:  ## a shell where the cluster is (inside a real node's namespace), KUBECONFIG set
	$(LOCALCLUSTER) shell

# Everything end to end on this machine: real node, images built here, operator from the Helm chart, a bot
# answering through its Service (backed by a local echo server: no internet needed). `make demo-down` undoes it.
# No venv needed: the images are built by buildah from the Dockerfiles, the rest is the standard library.
demo: node-deps
	$(LOCALCLUSTER) demo up

demo-down:
	$(PYTHON) -m localcluster demo down
