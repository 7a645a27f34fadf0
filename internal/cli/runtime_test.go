package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestExecute(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{name: "help lists the subcommands", args: []string{"--help"}, wantCode: ExitOK, wantStdout: []string{"serve", "probe", "fetch"}},
		{name: "serve help documents its flags", args: []string{"serve", "--help"}, wantCode: ExitOK, wantStdout: []string{"--http-address", "--grpc-address", "--usage-endpoint", "--adaptive-procs"}},
		{name: "probe help documents its flags", args: []string{"probe", "--help"}, wantCode: ExitOK, wantStdout: []string{"--node-name"}},
		{name: "fetch help documents its flags", args: []string{"fetch", "--help"}, wantCode: ExitOK, wantStdout: []string{"--uri", "--dest"}},
		{name: "serve needs its model", args: []string{"serve", "--namespace=ns"}, wantCode: ExitError, wantStderr: []string{"--model and --namespace"}},
		{name: "probe needs a node name", args: []string{"probe", "--node-name="}, wantCode: ExitError, wantStderr: []string{"--node-name"}},
		{name: "probe interval below 1s", args: []string{"probe", "--node-name=n1", "--interval=500ms"}, wantCode: ExitError, wantStderr: []string{"at least 1s"}},
		{name: "fetch needs a destination", args: []string{"fetch", "--uri=hf://a/b"}, wantCode: ExitError, wantStderr: []string{"--uri and --dest are required"}},
		{name: "unknown subcommand", args: []string{"train"}, wantCode: ExitError, wantStderr: []string{"unknown command"}},
		{name: "unknown flag", args: []string{"serve", "--bogus"}, wantCode: ExitError, wantStderr: []string{"unknown flag"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := Execute(tc.args, &stdout, &stderr); code != tc.wantCode {
				t.Errorf("exit code = %d, want %d (stderr %q)", code, tc.wantCode, stderr.String())
			}
			for _, want := range tc.wantStdout {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
				}
			}
			for _, want := range tc.wantStderr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
				}
			}
		})
	}
}

func TestAdaptsProcs(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	if !adaptsProcs(true) || adaptsProcs(false) {
		t.Error("without GOMAXPROCS in the environment, the flag decides")
	}
	t.Setenv("GOMAXPROCS", "3")
	if adaptsProcs(true) {
		t.Error("GOMAXPROCS=3 in the environment: want it kept, not adapted")
	}
}
