# Local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok):
# see docs/local-cluster.md. Binaries are built into ~/.cache/kubechat (or $KUBECHAT_CACHE) on first use.
PYTHON ?= python3
LOCALCLUSTER := $(PYTHON) tests/cluster/localcluster.py

.PHONY: cluster-up cluster-down

cluster-up:
	$(LOCALCLUSTER) up

cluster-down:
	$(LOCALCLUSTER) down
