# kubechat developer entry points. `make setup run` and `make test` are the README's first lines.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
export TIKTOKEN_CACHE_DIR ?= $(CURDIR)/.cache/tiktoken

.PHONY: setup run serve chat test lint cluster-up cluster-down crds

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

test: lint  ## lint, type-check and run every test (the cluster tests build the control plane on first use)
	$(BIN)/pytest

# Local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok):
# see docs/local-cluster.md. Binaries are built into ~/.cache/kubechat (or $KUBECHAT_CACHE) on first use.
LOCALCLUSTER := $(PYTHON) tests/cluster/localcluster.py

cluster-up:
	$(LOCALCLUSTER) up

cluster-down:
	$(LOCALCLUSTER) down
