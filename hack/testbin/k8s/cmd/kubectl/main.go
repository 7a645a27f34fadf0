// Command kubectl is the upstream kubectl at the same version as the test API server.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		// kubectl prints nothing itself on this path; CheckErr prints and exits non-zero.
		util.CheckErr(err)
	}
}
