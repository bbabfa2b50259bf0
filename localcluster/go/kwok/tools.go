//go:build tools

// Package tools pins kwok, which fakes kubelets for nodes it manages.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
