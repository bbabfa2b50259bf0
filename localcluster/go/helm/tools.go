//go:build tools

// Package tools pins the Helm CLI that the chart tests build (lint, template).
package tools

import _ "helm.sh/helm/v3/cmd/helm"
