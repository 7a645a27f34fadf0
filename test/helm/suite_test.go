// Package helm_test checks the Helm chart charts/helixflow and the kustomize base
// config/default against a real kube-apiserver: helm lint, helm template applied with
// --dry-run=server (so the API server validates every object, the CRDs included), the
// rendered manager Deployment, and that the chart's generated files match config/.
package helm_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/helixflow/helixflow/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	code := testenv.Run(m, &env)
	if kubeconfigPath != "" {
		_ = os.RemoveAll(filepath.Dir(kubeconfigPath))
	}
	os.Exit(code)
}
