// Package argocd_test runs the Argo CD health checks in docs/argocd the way Argo CD does: the
// object's JSON becomes a global Lua table `obj` (objects to tables, arrays to tables with
// 1-based indices), the script runs, and the table it returns carries status and message.
package argocd_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/gpu"
	"github.com/helixflow/helixflow/internal/probe"
)

const (
	healthy     = "Healthy"
	progressing = "Progressing"
	degraded    = "Degraded"
	suspended   = "Suspended"
)

// readyFalse is the decision for every reason that can appear on a kind's Ready condition
// with status False. The scripts' falseReasons tables must hold exactly these entries.
var readyFalse = map[string]map[string]string{
	"gpupool": {
		servingv1alpha1.GPUPoolReasonNoMatchingNodes:   degraded,
		servingv1alpha1.GPUPoolReasonNoReadyNodes:      degraded,
		servingv1alpha1.GPUPoolReasonNoAllocatableGPUs: degraded,
	},
	"gpunode": {
		servingv1alpha1.ReasonReconcileError:          degraded,
		servingv1alpha1.GPUNodeReasonNVMLUnavailable:  degraded,
		servingv1alpha1.GPUNodeReasonUnhealthyDevices: degraded,
		servingv1alpha1.GPUNodeReasonNoDevices:        degraded,
	},
	"inferencemodel": {
		servingv1alpha1.ReasonReconcileError:                        degraded,
		servingv1alpha1.InferenceModelReasonReplicasNotReady:        progressing,
		servingv1alpha1.InferenceModelReasonWeightsFetching:         progressing,
		servingv1alpha1.InferenceModelReasonIngressPending:          progressing,
		servingv1alpha1.InferenceModelReasonRoutePending:            progressing,
		servingv1alpha1.InferenceModelReasonCertificatePending:      progressing,
		certManagerDoesNotExist:                                     progressing,
		certificateNotReady:                                         progressing,
		servingv1alpha1.InferenceModelReasonNotScheduled:            degraded,
		servingv1alpha1.InferenceModelReasonWeightsFailed:           degraded,
		servingv1alpha1.InferenceModelReasonInvalidEndpoint:         degraded,
		servingv1alpha1.InferenceModelReasonRouteNotAccepted:        degraded,
		servingv1alpha1.InferenceModelReasonGatewayAPINotInstalled:  degraded,
		servingv1alpha1.InferenceModelReasonNoIssuer:                degraded,
		servingv1alpha1.InferenceModelReasonCertManagerNotInstalled: degraded,
	},
	"apikey": {
		servingv1alpha1.ApiKeyReasonKeySuspended:     suspended,
		servingv1alpha1.ApiKeyReasonKeyExpired:       degraded,
		servingv1alpha1.ApiKeyReasonQuotaExhausted:   degraded,
		servingv1alpha1.ApiKeyReasonSecretNotFound:   degraded,
		servingv1alpha1.ApiKeyReasonSecretKeyMissing: degraded,
		servingv1alpha1.ApiKeyReasonSecretConflict:   degraded,
		servingv1alpha1.ApiKeyReasonSecretModified:   degraded,
		servingv1alpha1.ApiKeyReasonKeyTooLong:       degraded,
	},
}

// Reasons of cert-manager's Certificate Ready condition that the InferenceModel controller
// mirrors into TLSReady (and so into Ready) while a certificate is first issued.
const (
	certManagerDoesNotExist = "DoesNotExist"
	certificateNotReady     = "CertificateNotReady" // the controller's fallback for an empty reason
)

// readyTrue holds the reasons Ready=True carries; they are Healthy whatever the reason.
var readyTrue = map[string][]string{
	"gpupool":        {servingv1alpha1.GPUPoolReasonNodesReady},
	"gpunode":        {servingv1alpha1.GPUNodeReasonProbed},
	"inferencemodel": {servingv1alpha1.InferenceModelReasonReplicasReady, servingv1alpha1.InferenceModelReasonScaledToZero},
	"apikey":         {servingv1alpha1.ApiKeyReasonKeyActive},
}

// notOnReady are reason constants that never reach a Ready condition, and why.
var notOnReady = map[string]string{
	"GPUPoolReasonProbeDisabled":                "Probed condition only",
	"GPUPoolReasonReportsFresh":                 "Probed condition only",
	"GPUPoolReasonReportsMissing":               "Probed condition only",
	"ApiKeyReasonWithinQuota":                   "QuotaExhausted condition only",
	"ApiKeyReasonNotExpired":                    "Expired condition only",
	"ApiKeyReasonNotSuspended":                  "Suspended condition only",
	"InferenceModelReasonPlaced":                "Scheduled condition only; Ready says NotScheduled",
	"InferenceModelReasonNoGPURequested":        "Scheduled condition only",
	"InferenceModelReasonPoolNotFound":          "Scheduled condition only; Ready says NotScheduled",
	"InferenceModelReasonNamespaceNotAllowed":   "Scheduled condition only; Ready says NotScheduled",
	"InferenceModelReasonNoMatchingNodes":       "Scheduled condition only; Ready says NotScheduled",
	"InferenceModelReasonInsufficientGPUs":      "Scheduled condition only; Ready says NotScheduled",
	"InferenceModelReasonInsufficientGPUMemory": "Scheduled condition only; Ready says NotScheduled",
	"InferenceModelReasonPartiallyPlaced":       "Scheduled condition only",
	"InferenceModelReasonIngressAdmitted":       "Exposed=True never blocks Ready",
	"InferenceModelReasonRouteAccepted":         "Exposed=True never blocks Ready",
	"InferenceModelReasonNotExposed":            "no Exposed condition without spec.endpoint",
	"InferenceModelReasonWeightsFetched":        "WeightsReady=True never blocks Ready",
	"InferenceModelReasonWeightsOnVolume":       "WeightsReady=True never blocks Ready",
	"InferenceModelReasonWeightsPending":        "WeightsReady=Unknown: Ready keeps ReplicasNotReady",
}

// kindsOf maps a reason constant's name prefix to the kinds whose Ready it may appear on.
func kindsOf(name string) []string {
	for prefix, kind := range map[string]string{
		"GPUPoolReason": "gpupool", "GPUNodeReason": "gpunode",
		"InferenceModelReason": "inferencemodel", "ApiKeyReason": "apikey",
	} {
		if strings.HasPrefix(name, prefix) {
			return []string{kind}
		}
	}
	if name == "ReasonReconcileError" {
		return []string{"gpunode", "inferencemodel"} // the others' reconcilers return their errors
	}
	return []string{"gpupool", "gpunode", "inferencemodel", "apikey"}
}

// reasonConstants reads every string constant named *Reason* from api/v1alpha1.
func reasonConstants(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join("..", "..", "api", "v1alpha1", "*_types.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("api/v1alpha1 sources: %v (%d files)", err, len(files))
	}
	out := map[string]string{}
	for _, f := range files {
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			for i, name := range vs.Names {
				if !strings.Contains(name.Name, "Reason") || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				v, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				out[name.Name] = v
			}
			return true
		})
	}
	return out
}

func TestEveryReasonIsClassified(t *testing.T) {
	consts := reasonConstants(t)
	if len(consts) < 40 {
		t.Fatalf("found only %d reason constants; is the parser looking in the right place?", len(consts))
	}
	for name, value := range consts {
		if _, ok := notOnReady[name]; ok {
			continue
		}
		for _, kind := range kindsOf(name) {
			_, onFalse := readyFalse[kind][value]
			if !onFalse && !slices.Contains(readyTrue[kind], value) {
				t.Errorf("%s (%q) is not classified for %s: add it to readyFalse/readyTrue here and to docs/argocd/%s.lua, or to notOnReady with why",
					name, value, kind, kind)
			}
		}
	}
	for name := range notOnReady {
		if _, ok := consts[name]; !ok {
			t.Errorf("notOnReady names %s, which api/v1alpha1 no longer declares", name)
		}
	}
}

var falseReasonsTable = regexp.MustCompile(`(?s)local falseReasons = \{(.*?)\n\}`)
var tableEntry = regexp.MustCompile(`(?m)^\s*([A-Za-z][A-Za-z0-9]*) = "([A-Za-z]+)",`)

// TestScriptTablesMatch keeps each script's table equal to the decisions above, so a reason
// left to the script's default (Degraded) is still a decision someone wrote down.
func TestScriptTablesMatch(t *testing.T) {
	for kind, want := range readyFalse {
		src := readScript(t, kind)
		m := falseReasonsTable.FindStringSubmatch(src)
		if m == nil {
			t.Fatalf("%s.lua has no falseReasons table", kind)
		}
		got := map[string]string{}
		for _, e := range tableEntry.FindAllStringSubmatch(m[1], -1) {
			got[e[1]] = e[2]
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s.lua falseReasons = %v, want %v", kind, got, want)
		}
	}
}

func readScript(t *testing.T, kind string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "argocd", kind+".lua"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// decodeValue converts JSON-decoded values to Lua values as Argo CD's lua.go does.
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case []any:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}

type health struct{ Status, Message string }

// runHealth runs docs/argocd/<kind>.lua against obj serialized to JSON.
func runHealth(t *testing.T, kind string, obj any) health {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	var u map[string]any
	if err := json.Unmarshal(raw, &u); err != nil {
		t.Fatal(err)
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	// Argo CD opens only these libraries for health scripts.
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.fn), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			t.Fatal(err)
		}
	}
	l.SetGlobal("obj", decodeValue(l, u))
	if err := l.DoString(readScript(t, kind)); err != nil {
		t.Fatalf("%s.lua: %v", kind, err)
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("%s.lua returned %s, want a table", kind, l.Get(-1).Type())
	}
	h := health{Status: lua.LVAsString(ret.RawGetString("status")), Message: lua.LVAsString(ret.RawGetString("message"))}
	if !slices.Contains([]string{healthy, progressing, degraded, suspended, "Missing", "Unknown"}, h.Status) {
		t.Fatalf("%s.lua returned status %q, not an Argo CD health status", kind, h.Status)
	}
	return h
}

var now = metav1.NewTime(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))

// cond is a condition as the controllers' setCondition writes it.
func cond(typ string, status metav1.ConditionStatus, reason, message string, gen int64) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: message, ObservedGeneration: gen, LastTransitionTime: now}
}

func objectMeta(name string, gen int64) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: "team-a", Generation: gen, UID: "0b5ad0e4-6c2b-4a52-9d1d-5a1e0c8d7f11", CreationTimestamp: now}
}

type healthCase struct {
	name        string
	obj         any
	want        string
	wantMessage string
}

func check(t *testing.T, kind string, cases []healthCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := runHealth(t, kind, tc.obj)
			if got.Status != tc.want {
				t.Errorf("status = %q (%q), want %q", got.Status, got.Message, tc.want)
			}
			if !strings.Contains(got.Message, tc.wantMessage) {
				t.Errorf("message = %q, want it to contain %q", got.Message, tc.wantMessage)
			}
		})
	}
}

// model builds an InferenceModel whose status is shaped like computeModelStatus and
// setExposureStatus leave it: Scheduled, Available, optional Exposed/TLSReady, and Ready.
func model(gen, observed int64, ready metav1.Condition, extra ...metav1.Condition) *servingv1alpha1.InferenceModel {
	m := &servingv1alpha1.InferenceModel{
		TypeMeta:   metav1.TypeMeta{APIVersion: servingv1alpha1.GroupVersion.String(), Kind: "InferenceModel"},
		ObjectMeta: objectMeta("llama", gen),
		Spec:       servingv1alpha1.InferenceModelSpec{Replicas: ptr.To[int32](2)},
	}
	st := &m.Status
	st.ObservedGeneration = observed
	st.ModelName = "llama"
	st.URL = "http://llama.team-a.svc.cluster.local:8080/v1"
	meta.SetStatusCondition(&st.Conditions, cond(servingv1alpha1.InferenceModelConditionScheduled, metav1.ConditionTrue,
		servingv1alpha1.InferenceModelReasonPlaced, "2 replicas on pool a100", observed))
	meta.SetStatusCondition(&st.Conditions, cond(servingv1alpha1.InferenceModelConditionAvailable, metav1.ConditionTrue,
		servingv1alpha1.InferenceModelReasonReplicasReady, "2 of 2 replicas ready", observed))
	for _, c := range extra {
		meta.SetStatusCondition(&st.Conditions, c)
	}
	ready.Type = servingv1alpha1.ConditionReady
	meta.SetStatusCondition(&st.Conditions, ready)
	return m
}

func TestInferenceModelHealth(t *testing.T) {
	fresh := &servingv1alpha1.InferenceModel{
		TypeMeta:   metav1.TypeMeta{APIVersion: servingv1alpha1.GroupVersion.String(), Kind: "InferenceModel"},
		ObjectMeta: objectMeta("llama", 1),
	}
	ready := cond("", metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonReplicasReady, "2 of 2 replicas ready", 3)
	notReady := func(reason, msg string) metav1.Condition { return cond("", metav1.ConditionFalse, reason, msg, 3) }
	cases := []healthCase{
		{"fresh object without status", fresh, progressing, "Waiting"},
		{"ready at current generation", model(3, 3, ready), healthy, "2 of 2 replicas ready"},
		{"ready at first generation", model(1, 1, cond("", metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonReplicasReady, "2 of 2 replicas ready", 1)), healthy, "2 of 2"},
		{"scaled to zero", model(3, 3, cond("", metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonScaledToZero, "spec.replicas is 0", 3)), healthy, "spec.replicas is 0"},
		{"ready but observedGeneration behind", model(3, 2, cond("", metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonReplicasReady, "2 of 2 replicas ready", 2)), progressing, "generation 3"},
		{"ready unknown", model(3, 3, cond("", metav1.ConditionUnknown, "Pending", "", 3)), progressing, "Pending"},
		{"unknown reason", model(3, 3, notReady("SomethingNew", "new failure")), degraded, "new failure"},
		{"ingress pending", model(3, 3, notReady(servingv1alpha1.InferenceModelReasonIngressPending, "Exposed: Ingress llama has no load balancer address yet"),
			cond(servingv1alpha1.InferenceModelConditionExposed, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonIngressPending, "Ingress llama has no load balancer address yet", 3)),
			progressing, "Exposed: Ingress llama has no load balancer address yet"},
		{"certificate from cert-manager not issued yet", model(3, 3, notReady(certManagerDoesNotExist, "TLSReady: Certificate llama-tls: Issuing certificate as Secret does not exist"),
			cond(servingv1alpha1.InferenceModelConditionTLSReady, metav1.ConditionFalse, certManagerDoesNotExist, "Certificate llama-tls: Issuing certificate as Secret does not exist", 3)),
			progressing, "Secret does not exist"},
	}
	for reason, want := range readyFalse["inferencemodel"] {
		msg := fmt.Sprintf("message for %s", reason)
		switch reason {
		case servingv1alpha1.InferenceModelReasonReplicasNotReady:
			msg = "1 of 2 replicas ready"
		case servingv1alpha1.InferenceModelReasonNotScheduled:
			msg = "pool a100 has 1 free GPU, 2 are needed"
		case servingv1alpha1.ReasonReconcileError:
			msg = `applying Deployment llama: admission webhook "policy" denied the request`
		case servingv1alpha1.InferenceModelReasonInvalidEndpoint:
			msg = "Exposed: spec.endpoint.host: must be a DNS name"
		}
		cases = append(cases, healthCase{"reason " + reason, model(3, 3, notReady(reason, msg)), want, msg})
	}
	check(t, "inferencemodel", cases)
}

func pool(gen, observed int64, ready *metav1.Condition) *servingv1alpha1.GPUPool {
	p := &servingv1alpha1.GPUPool{
		TypeMeta:   metav1.TypeMeta{APIVersion: servingv1alpha1.GroupVersion.String(), Kind: "GPUPool"},
		ObjectMeta: objectMeta("a100", gen),
	}
	p.Namespace = ""
	if ready == nil {
		return p
	}
	p.Status.ObservedGeneration = observed
	p.Status.Nodes = 2
	meta.SetStatusCondition(&p.Status.Conditions, cond(servingv1alpha1.GPUPoolConditionProbed, metav1.ConditionTrue,
		servingv1alpha1.GPUPoolReasonReportsFresh, "2 of 2 nodes reported", observed))
	c := *ready
	c.Type = servingv1alpha1.ConditionReady
	meta.SetStatusCondition(&p.Status.Conditions, c)
	return p
}

func TestGPUPoolHealth(t *testing.T) {
	ready := cond("", metav1.ConditionTrue, servingv1alpha1.GPUPoolReasonNodesReady, "2 nodes ready, 16 GPUs allocatable", 2)
	cases := []healthCase{
		{"fresh object without status", pool(1, 0, nil), progressing, "Waiting"},
		{"ready at current generation", pool(2, 2, &ready), healthy, "16 GPUs allocatable"},
		{"ready but observedGeneration behind", pool(3, 2, &ready), progressing, "generation 3"},
	}
	for reason, want := range readyFalse["gpupool"] {
		c := cond("", metav1.ConditionFalse, reason, "message for "+reason, 2)
		if reason == servingv1alpha1.GPUPoolReasonNoReadyNodes {
			c.Message = "none of 2 nodes is Ready"
		}
		cases = append(cases, healthCase{"reason " + reason, pool(2, 2, &c), want, c.Message})
	}
	check(t, "gpupool", cases)
}

// gpuNode's status comes from the probe's own BuildStatus.
func gpuNode(snap gpu.Snapshot, sampleErr error) *servingv1alpha1.GPUNode {
	n := &servingv1alpha1.GPUNode{
		TypeMeta:   metav1.TypeMeta{APIVersion: servingv1alpha1.GroupVersion.String(), Kind: "GPUNode"},
		ObjectMeta: objectMeta("node-1", 1),
	}
	n.Namespace = ""
	n.Status = probe.BuildStatus(snap, sampleErr, nil, now)
	return n
}

func TestGPUNodeHealth(t *testing.T) {
	h100 := gpu.Device{Index: 0, UUID: "GPU-1", Product: "NVIDIA H100 80GB HBM3", MemoryTotalMiB: 81559, Healthy: true, ComputeCapability: "9.0"}
	sick := h100
	sick.UUID, sick.Healthy = "GPU-2", false
	fresh := &servingv1alpha1.GPUNode{TypeMeta: metav1.TypeMeta{APIVersion: servingv1alpha1.GroupVersion.String(), Kind: "GPUNode"}, ObjectMeta: objectMeta("node-1", 1)}
	cases := []healthCase{
		{"fresh object without status", fresh, progressing, "Waiting"},
		{"probed", gpuNode(gpu.Snapshot{DriverVersion: "550.54.15", Devices: []gpu.Device{h100}}, nil), healthy, "1 healthy GPUs"},
		{"no devices", gpuNode(gpu.Snapshot{DriverVersion: "550.54.15"}, nil), degraded, "NVML reports no GPU"},
		{"unhealthy devices", gpuNode(gpu.Snapshot{Devices: []gpu.Device{h100, sick}}, nil), degraded, "1 of 2 GPUs unhealthy"},
		{"nvml unavailable", gpuNode(gpu.Snapshot{}, fmt.Errorf("loading libnvidia-ml.so.1: %w", gpu.ErrNVMLUnavailable)), degraded, "libnvidia-ml.so.1"},
		{"probe error", gpuNode(gpu.Snapshot{}, errors.New("nvmlDeviceGetCount: Unknown Error")), degraded, "Unknown Error"},
	}
	for reason, want := range readyFalse["gpunode"] {
		n := gpuNode(gpu.Snapshot{Devices: []gpu.Device{h100}}, nil)
		meta.SetStatusCondition(&n.Status.Conditions, cond(servingv1alpha1.ConditionReady, metav1.ConditionFalse, reason, "message for "+reason, 0))
		cases = append(cases, healthCase{"reason " + reason, n, want, "message for " + reason})
	}
	check(t, "gpunode", cases)
}

// apiKey's status is shaped like setApiKeyConditions leaves it.
func apiKey(gen, observed int64, suspend bool, ready *metav1.Condition) *servingv1alpha1.ApiKey {
	ak := &servingv1alpha1.ApiKey{
		TypeMeta:   metav1.TypeMeta{APIVersion: servingv1alpha1.GroupVersion.String(), Kind: "ApiKey"},
		ObjectMeta: objectMeta("ci-bot", gen),
		Spec:       servingv1alpha1.ApiKeySpec{Suspend: ptr.To(suspend)},
	}
	if ready == nil {
		return ak
	}
	st := &ak.Status
	st.ObservedGeneration = observed
	st.KeyID = "hfk_3f9a"
	sus := cond(servingv1alpha1.ApiKeyConditionSuspended, metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonNotSuspended, "", observed)
	if suspend {
		sus = cond(servingv1alpha1.ApiKeyConditionSuspended, metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeySuspended, "spec.suspend is true", observed)
	}
	meta.SetStatusCondition(&st.Conditions, sus)
	meta.SetStatusCondition(&st.Conditions, cond(servingv1alpha1.ApiKeyConditionExpired, metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonNotExpired, "", observed))
	meta.SetStatusCondition(&st.Conditions, cond(servingv1alpha1.ApiKeyConditionQuotaExhausted, metav1.ConditionFalse, servingv1alpha1.ApiKeyReasonWithinQuota, "", observed))
	c := *ready
	c.Type = servingv1alpha1.ConditionReady
	meta.SetStatusCondition(&st.Conditions, c)
	return ak
}

func TestApiKeyHealth(t *testing.T) {
	active := cond("", metav1.ConditionTrue, servingv1alpha1.ApiKeyReasonKeyActive, "key hfk_3f9a is accepted", 1)
	messages := map[string]string{
		servingv1alpha1.ApiKeyReasonKeySuspended:   "spec.suspend is true",
		servingv1alpha1.ApiKeyReasonKeyExpired:     "expired at 2026-11-01T00:00:00Z",
		servingv1alpha1.ApiKeyReasonQuotaExhausted: "token quota used up for this window",
		servingv1alpha1.ApiKeyReasonSecretNotFound: "Secret ci-bot-key not found",
		servingv1alpha1.ApiKeyReasonSecretConflict: "Secret ci-bot-key exists and is not owned by this ApiKey; set spec.secretName to another name",
	}
	cases := []healthCase{
		{"fresh object without status", apiKey(1, 0, false, nil), progressing, "Waiting"},
		{"active at current generation", apiKey(1, 1, false, &active), healthy, "key hfk_3f9a is accepted"},
		{"active but observedGeneration behind", apiKey(2, 1, false, &active), progressing, "generation 2"},
	}
	for reason, want := range readyFalse["apikey"] {
		msg, ok := messages[reason]
		if !ok {
			msg = "message for " + reason
		}
		c := cond("", metav1.ConditionFalse, reason, msg, 1)
		cases = append(cases, healthCase{"reason " + reason, apiKey(1, 1, reason == servingv1alpha1.ApiKeyReasonKeySuspended, &c), want, msg})
	}
	check(t, "apikey", cases)
}
