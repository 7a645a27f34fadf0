package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

const crdDir = "../../config/crd/bases"

func readTestCRDs(t *testing.T) []apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	crds, err := readCRDs(crdDir)
	if err != nil {
		t.Fatal(err)
	}
	return crds
}

// The reference is generated into git; two runs must write the same bytes, or `make verify`
// would report drift on every run.
func TestRenderIsDeterministic(t *testing.T) {
	first := render(readTestCRDs(t), "config/crd/bases")
	for range 5 {
		if again := render(readTestCRDs(t), "config/crd/bases"); !bytes.Equal(first, again) {
			t.Fatal("two renders of the same CRDs differ")
		}
	}
}

// Every field of every schema has a row, found by a walk of the raw YAML that shares no code
// with the generator's own walk over the typed schema.
func TestEveryFieldHasARow(t *testing.T) {
	doc := string(render(readTestCRDs(t), "config/crd/bases"))
	files, err := filepath.Glob(filepath.Join(crdDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	kinds := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var crd map[string]any
		if err := yaml.Unmarshal(data, &crd); err != nil {
			t.Fatal(err)
		}
		spec := crd["spec"].(map[string]any)
		kind := spec["names"].(map[string]any)["kind"].(string)
		if !strings.Contains(doc, "\n## "+kind+"\n") {
			t.Errorf("%s: no section for the kind", kind)
		}
		kinds++
		for _, v := range spec["versions"].([]any) {
			schema := v.(map[string]any)["schema"].(map[string]any)["openAPIV3Schema"].(map[string]any)
			var paths []string
			rawPaths(schema, "", &paths)
			if len(paths) < 5 {
				t.Fatalf("%s: walked only %d fields; the test's walk is broken", kind, len(paths))
			}
			for _, p := range paths {
				if !strings.Contains(doc, "\n| `"+p+"` |") {
					t.Errorf("%s: no row for %s", kind, p)
				}
			}
		}
	}
	if kinds != 4 {
		t.Errorf("found %d CRDs, want 4 (GPUPool, GPUNode, InferenceModel, ApiKey)", kinds)
	}
}

func rawPaths(schema map[string]any, prefix string, out *[]string) {
	props, _ := schema["properties"].(map[string]any)
	for name, child := range props {
		p := name
		if prefix != "" {
			p = prefix + "." + name
		}
		*out = append(*out, p)
		rawChildren(child.(map[string]any), p, out)
	}
}

func rawChildren(schema map[string]any, path string, out *[]string) {
	rawPaths(schema, path, out)
	if items, ok := schema["items"].(map[string]any); ok {
		rawChildren(items, path+"[]", out)
	}
	if ap, ok := schema["additionalProperties"].(map[string]any); ok {
		rawChildren(ap, path+"{}", out)
	}
}

// The rows carry what the API server enforces; a few known constraints from each kind prove
// that defaults, bounds, enums and CEL rules with their messages make it into the text.
func TestRowsCarryValidation(t *testing.T) {
	doc := string(render(readTestCRDs(t), "config/crd/bases"))
	for _, want := range []string{
		"| `spec.probe.interval` | string | optional | `\"60s\"` | max length 32<br>pattern ",
		"| `spec.auth.mode` | string | optional | `\"APIKeyOrJWT\"` | one of `\"APIKey\"`, `\"JWT\"`, `\"APIKeyOrJWT\"`, `\"None\"` |",
		"rule `self == oldSelf`: secretName is immutable",
		"| `spec.nodeSelector` | object | **required** |",
		// "|" inside a CEL rule must not end the table cell.
		"rule `!(has(self.gatewayRef) && has(self.ingressClassName))`: gatewayRef and ingressClassName are mutually exclusive",
		"`has(self.spec.secretName) \\|\\| has(self.spec.existingSecretRef)",
		// "<name>" in a description must not become an HTML tag.
		"defaults to &lt;name&gt;-apikey.",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("reference lacks %q", want)
		}
	}
}

// docs/api.md is committed; this fails in `go test` (not only in `make verify`) when the API
// changed and the reference was not regenerated.
func TestCommittedReferenceIsCurrent(t *testing.T) {
	committed, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, render(readTestCRDs(t), "config/crd/bases")) {
		t.Fatal("docs/api.md is out of date: run `make docs`")
	}
}
