// Package apivalidation proves, against a real kube-apiserver, that the CRDs accept the
// samples and reject invalid objects at admission with a message naming the field.
package apivalidation

import (
	"os"
	"testing"

	"github.com/helixflow/helixflow/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }
