"""The local Kubernetes cluster kubechat is developed, tested and demonstrated on: a tool, not a test helper.

Built here from pinned Go modules (build.py) into one shared cache (cache.py): etcd, the control plane and
either kwok's fake nodes or one real node (containerd, kubelet, kube-proxy) in a network namespace of its
own (node.py), the images its pods run (images.py, buildah.py), and `make demo` (demo.py). Standard library
only, so `python3 -m localcluster` (cli.py) runs before anything is pip-installed. Not part of the wheel.
"""
