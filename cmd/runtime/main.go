// Command runtime is the HelixFlow data-plane binary. Its subcommands run in model pods
// (serve, fetch) and in the per-pool probe DaemonSet (probe); see internal/cli.
package main

import (
	"os"

	"github.com/helixflow/helixflow/internal/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args[1:], os.Stdout, os.Stderr))
}
