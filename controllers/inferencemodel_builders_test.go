package controllers

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/usage"
)

// The builders are pure, so these tests need no API server: they build a model and a pool
// with the fluent helpers below and check the objects the builders return.

// builderTestConfig uses images that differ from DefaultEngineImages, so a test that sees
// one of them proves the image came from the Config and not from a literal in the builder.
var builderTestConfig = Config{
	RuntimeImage: "registry.test/helixflow/runtime:v1",
	EngineImages: map[servingv1alpha1.EngineType]string{
		servingv1alpha1.EngineVLLM:     "registry.test/vllm:v1",
		servingv1alpha1.EngineLlamaCpp: "registry.test/llama.cpp:v1",
		servingv1alpha1.EngineTGI:      "registry.test/tgi:v1",
		servingv1alpha1.EngineOllama:   "registry.test/ollama:v1",
		servingv1alpha1.EngineSGLang:   "registry.test/sglang:v1",
	},
	UsageEndpoint: "usage.test:9443",
	ClusterDomain: "cluster.test",
}

const builderTestNamespace = "team-a"

// modelWrapper builds InferenceModels fluently, as kueue's MakeLocalQueue(...).Obj() does.
type modelWrapper struct{ servingv1alpha1.InferenceModel }

// makeModel is a CPU-only VLLM model on port 8000 fetching from Hugging Face, as the API
// server's defaults would leave it.
func makeModel(name string) *modelWrapper {
	return &modelWrapper{servingv1alpha1.InferenceModel{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: builderTestNamespace},
		Spec: servingv1alpha1.InferenceModelSpec{
			Model:  servingv1alpha1.ModelSource{URI: "hf://meta-llama/Llama-3.1-8B-Instruct"},
			Engine: servingv1alpha1.EngineSpec{Type: servingv1alpha1.EngineVLLM, Port: 8000},
		},
	}}
}

func (w *modelWrapper) Obj() *servingv1alpha1.InferenceModel { return &w.InferenceModel }

func (w *modelWrapper) Engine(t servingv1alpha1.EngineType) *modelWrapper {
	w.Spec.Engine.Type = t
	return w
}

func (w *modelWrapper) Image(image string) *modelWrapper {
	w.Spec.Engine.Image = image
	return w
}

func (w *modelWrapper) Port(port int32) *modelWrapper {
	w.Spec.Engine.Port = port
	return w
}

func (w *modelWrapper) Args(args ...string) *modelWrapper {
	w.Spec.Engine.Args = args
	return w
}

func (w *modelWrapper) EngineEnv(name, value string) *modelWrapper {
	w.Spec.Engine.Env = append(w.Spec.Engine.Env, corev1.EnvVar{Name: name, Value: value})
	return w
}

func (w *modelWrapper) ServedName(name string) *modelWrapper {
	w.Spec.Model.Name = name
	return w
}

func (w *modelWrapper) URI(uri string) *modelWrapper {
	w.Spec.Model.URI = uri
	return w
}

func (w *modelWrapper) Revision(rev string) *modelWrapper {
	w.Spec.Model.Revision = rev
	return w
}

func (w *modelWrapper) Credentials(secret string) *modelWrapper {
	w.Spec.Model.CredentialsSecretRef = &servingv1alpha1.LocalSecretReference{Name: secret}
	return w
}

func (w *modelWrapper) GPUs(pool string, count int32) *modelWrapper {
	w.Spec.GPU = servingv1alpha1.GPURequirements{Pool: pool, Count: count}
	return w
}

func (w *modelWrapper) Limit(name corev1.ResourceName, qty string) *modelWrapper {
	if w.Spec.Resources.Limits == nil {
		w.Spec.Resources.Limits = corev1.ResourceList{}
	}
	w.Spec.Resources.Limits[name] = resource.MustParse(qty)
	return w
}

func (w *modelWrapper) Request(name corev1.ResourceName, qty string) *modelWrapper {
	if w.Spec.Resources.Requests == nil {
		w.Spec.Resources.Requests = corev1.ResourceList{}
	}
	w.Spec.Resources.Requests[name] = resource.MustParse(qty)
	return w
}

// poolWrapper builds GPUPools fluently.
type poolWrapper struct{ servingv1alpha1.GPUPool }

// makePool is a pool of whole nvidia.com/gpu GPUs with an empty node selector.
func makePool(name string) *poolWrapper {
	return &poolWrapper{servingv1alpha1.GPUPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       servingv1alpha1.GPUPoolSpec{ResourceName: servingv1alpha1.DefaultGPUResourceName},
	}}
}

func (w *poolWrapper) Obj() *servingv1alpha1.GPUPool { return &w.GPUPool }

func (w *poolWrapper) ResourceName(name string) *poolWrapper {
	w.Spec.ResourceName = name
	return w
}

func (w *poolWrapper) DeviceClass(name string) *poolWrapper {
	w.Spec.DeviceClassName = name
	return w
}

func (w *poolWrapper) NodeLabel(key, value string) *poolWrapper {
	if w.Spec.NodeSelector.MatchLabels == nil {
		w.Spec.NodeSelector.MatchLabels = map[string]string{}
	}
	w.Spec.NodeSelector.MatchLabels[key] = value
	return w
}

func (w *poolWrapper) NodeExpression(key string, op metav1.LabelSelectorOperator, values ...string) *poolWrapper {
	w.Spec.NodeSelector.MatchExpressions = append(w.Spec.NodeSelector.MatchExpressions,
		metav1.LabelSelectorRequirement{Key: key, Operator: op, Values: values})
	return w
}

func (w *poolWrapper) Toleration(t corev1.Toleration) *poolWrapper {
	w.Spec.Tolerations = append(w.Spec.Tolerations, t)
	return w
}

// desiredFor is what the reconciler builds from: pool is nil for CPU-only models.
func desiredFor(m *servingv1alpha1.InferenceModel, pool *servingv1alpha1.GPUPool, replicas int32) modelDesired {
	return modelDesired{model: m, pool: pool, replicas: replicas, cfg: builderTestConfig}
}

func mustDeployment(t *testing.T, d modelDesired) *appsv1.Deployment {
	t.Helper()
	dep, err := d.deployment()
	if err != nil {
		t.Fatalf("deployment(): %v", err)
	}
	return dep
}

func findContainer(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	names := make([]string, 0, len(cs))
	for _, c := range cs {
		names = append(names, c.Name)
	}
	t.Fatalf("no container %q among %v", name, names)
	return corev1.Container{}
}

func findVolume(t *testing.T, vols []corev1.Volume, name string) corev1.Volume {
	t.Helper()
	for _, v := range vols {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no volume %q", name)
	return corev1.Volume{}
}

func hasMount(c corev1.Container, want corev1.VolumeMount) bool {
	return slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return cmp.Equal(m, want) })
}

func envValue(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func TestEngineContainer(t *testing.T) {
	const name = "llama"
	gpuPool := makePool("h100").Obj()
	cases := map[string]struct {
		model       *servingv1alpha1.InferenceModel
		pool        *servingv1alpha1.GPUPool
		wantImage   string
		wantCommand []string
		wantArgs    []string
		// wantEnv are engine env vars that must be present with these values.
		wantEnv map[string]string
		// noEnv must be absent.
		noEnv []string
	}{
		"VLLM: default image, served name from spec, tensor parallel = gpu.count, user args last": {
			model: makeModel(name).Engine(servingv1alpha1.EngineVLLM).Port(8123).ServedName("meta/llama-3.1-8b").
				GPUs("h100", 4).Args("--max-model-len=8192", "--enforce-eager").Obj(),
			pool:      gpuPool,
			wantImage: "registry.test/vllm:v1",
			wantArgs: []string{"--model=/models/llama", "--served-model-name=meta/llama-3.1-8b", "--host=127.0.0.1",
				"--port=8123", "--tensor-parallel-size=4", "--max-model-len=8192", "--enforce-eager"},
			noEnv: []string{"OLLAMA_HOST", "OLLAMA_MODELS"},
		},
		"VLLM: served name defaults to metadata.name, CPU-only runs one shard": {
			model:     makeModel(name).Engine(servingv1alpha1.EngineVLLM).Obj(),
			wantImage: "registry.test/vllm:v1",
			wantArgs: []string{"--model=/models/llama", "--served-model-name=llama", "--host=127.0.0.1",
				"--port=8000", "--tensor-parallel-size=1"},
		},
		"VLLM: spec.engine.image overrides the default": {
			model:     makeModel(name).Engine(servingv1alpha1.EngineVLLM).Image("mirror.test/vllm:patched").GPUs("h100", 1).Obj(),
			pool:      gpuPool,
			wantImage: "mirror.test/vllm:patched",
			wantArgs: []string{"--model=/models/llama", "--served-model-name=llama", "--host=127.0.0.1",
				"--port=8000", "--tensor-parallel-size=1"},
		},
		"LlamaCpp on GPUs: alias, all layers offloaded": {
			model:     makeModel(name).Engine(servingv1alpha1.EngineLlamaCpp).Port(9000).ServedName("llama-q4").GPUs("h100", 2).Args("--ctx-size", "4096").Obj(),
			pool:      gpuPool,
			wantImage: "registry.test/llama.cpp:v1",
			wantArgs: []string{"--model", "/models/llama/.helixflow-model.gguf", "--alias", "llama-q4", "--host", "127.0.0.1", "--port", "9000",
				"--n-gpu-layers", "999", "--ctx-size", "4096"},
		},
		"LlamaCpp on CPU: no GPU layers": {
			model:     makeModel(name).Engine(servingv1alpha1.EngineLlamaCpp).Obj(),
			wantImage: "registry.test/llama.cpp:v1",
			wantArgs:  []string{"--model", "/models/llama/.helixflow-model.gguf", "--alias", "llama", "--host", "127.0.0.1", "--port", "8000"},
		},
		"TGI: num-shard = gpu.count": {
			model:     makeModel(name).Engine(servingv1alpha1.EngineTGI).Port(8081).GPUs("h100", 8).Args("--max-input-tokens=4096").Obj(),
			pool:      gpuPool,
			wantImage: "registry.test/tgi:v1",
			wantArgs:  []string{"--model-id=/models/llama", "--hostname=127.0.0.1", "--port=8081", "--num-shard=8", "--max-input-tokens=4096"},
		},
		"SGLang: python launcher, tp = gpu.count": {
			model:       makeModel(name).Engine(servingv1alpha1.EngineSGLang).Port(30000).ServedName("qwen").GPUs("h100", 2).Args("--mem-fraction-static=0.8").Obj(),
			pool:        gpuPool,
			wantImage:   "registry.test/sglang:v1",
			wantCommand: []string{"python3", "-m", "sglang.launch_server"},
			wantArgs: []string{"--model-path=/models/llama", "--served-model-name=qwen", "--host=127.0.0.1", "--port=30000",
				"--tp=2", "--mem-fraction-static=0.8"},
		},
		"Ollama: serve, address and models folder from env": {
			model:     makeModel(name).Engine(servingv1alpha1.EngineOllama).Port(11434).Args("--verbose").Obj(),
			wantImage: "registry.test/ollama:v1",
			wantArgs:  []string{"serve", "--verbose"},
			wantEnv:   map[string]string{"OLLAMA_HOST": "127.0.0.1:11434", "OLLAMA_MODELS": "/models/llama"},
		},
		"Custom: only the user's image and args": {
			model: makeModel(name).Engine(servingv1alpha1.EngineCustom).Image("example.test/my-engine:1").Port(8500).GPUs("h100", 2).
				Args("--listen=127.0.0.1:8500", "--weights=/models/llama").Obj(),
			pool:      gpuPool,
			wantImage: "example.test/my-engine:1",
			wantArgs:  []string{"--listen=127.0.0.1:8500", "--weights=/models/llama"},
			noEnv:     []string{"OLLAMA_HOST", "OLLAMA_MODELS"},
		},
		"user env is added after the engine's defaults": {
			model:     makeModel(name).Engine(servingv1alpha1.EngineTGI).EngineEnv("HF_HUB_OFFLINE", "1").Obj(),
			wantImage: "registry.test/tgi:v1",
			wantArgs:  []string{"--model-id=/models/llama", "--hostname=127.0.0.1", "--port=8000", "--num-shard=1"},
			wantEnv:   map[string]string{"HF_HUB_OFFLINE": "1", "HOME": "/tmp", "HF_HOME": "/cache"},
		},
	}
	for desc, tc := range cases {
		t.Run(desc, func(t *testing.T) {
			dep := mustDeployment(t, desiredFor(tc.model, tc.pool, 1))
			engine := findContainer(t, dep.Spec.Template.Spec.Containers, containerEngine)
			if engine.Image != tc.wantImage {
				t.Errorf("image = %q, want %q", engine.Image, tc.wantImage)
			}
			if diff := cmp.Diff(tc.wantCommand, engine.Command); diff != "" {
				t.Errorf("command (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantArgs, engine.Args); diff != "" {
				t.Errorf("args (-want +got):\n%s", diff)
			}
			// engineCommand is what the container runs, not a second opinion.
			cmd, args := engineCommand(tc.model)
			if diff := cmp.Diff(tc.wantArgs, args); diff != "" {
				t.Errorf("engineCommand args (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantCommand, cmd); diff != "" {
				t.Errorf("engineCommand command (-want +got):\n%s", diff)
			}
			for k, want := range tc.wantEnv {
				if got, ok := envValue(engine, k); !ok || got != want {
					t.Errorf("env %s = %q (present %v), want %q", k, got, ok, want)
				}
			}
			for _, k := range tc.noEnv {
				if v, ok := envValue(engine, k); ok {
					t.Errorf("env %s = %q, want it absent", k, v)
				}
			}
			// The runtime proxies to the engine's port on loopback.
			runtime := findContainer(t, dep.Spec.Template.Spec.Containers, containerRuntime)
			wantUpstream := fmt.Sprintf("--upstream=http://127.0.0.1:%d", tc.model.Spec.Engine.Port)
			if !slices.Contains(runtime.Args, wantUpstream) {
				t.Errorf("runtime args %v lack %q", runtime.Args, wantUpstream)
			}
			// The engine never publishes a port: only the authenticating runtime is reachable.
			if len(engine.Ports) != 0 {
				t.Errorf("engine ports = %v, want none", engine.Ports)
			}
		})
	}
}

func TestEngineImageMissing(t *testing.T) {
	cfg := builderTestConfig
	cfg.EngineImages = map[servingv1alpha1.EngineType]string{servingv1alpha1.EngineVLLM: "registry.test/vllm:v1"}
	cases := map[string]*servingv1alpha1.InferenceModel{
		"Custom without image":            makeModel("custom").Engine(servingv1alpha1.EngineCustom).Obj(),
		"engine with no configured image": makeModel("tgi").Engine(servingv1alpha1.EngineTGI).Obj(),
	}
	for desc, m := range cases {
		t.Run(desc, func(t *testing.T) {
			d := modelDesired{model: m, replicas: 1, cfg: cfg}
			if dep, err := d.deployment(); err == nil {
				engine := findContainer(t, dep.Spec.Template.Spec.Containers, containerEngine)
				t.Fatalf("deployment() built engine image %q, want an error", engine.Image)
			} else if !strings.Contains(err.Error(), "spec.engine.image") {
				t.Errorf("error %q does not tell the user to set spec.engine.image", err)
			}
		})
	}
}

func TestDeploymentGPUResources(t *testing.T) {
	const name = "llama"
	cases := map[string]struct {
		model *servingv1alpha1.InferenceModel
		pool  *servingv1alpha1.GPUPool
		// wantLimits and wantRequests are the engine container's, exactly.
		wantLimits, wantRequests corev1.ResourceList
		wantPodClaims            []corev1.PodResourceClaim
		wantContainerClaims      []corev1.ResourceClaim
	}{
		"extended resource: nvidia.com/gpu x2": {
			model:        makeModel(name).GPUs("h100", 2).Obj(),
			pool:         makePool("h100").Obj(),
			wantLimits:   corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("2")},
			wantRequests: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("2")},
		},
		"MIG profile as the extended resource": {
			model:        makeModel(name).GPUs("a100-mig", 1).Obj(),
			pool:         makePool("a100-mig").ResourceName("nvidia.com/mig-3g.40gb").Obj(),
			wantLimits:   corev1.ResourceList{"nvidia.com/mig-3g.40gb": resource.MustParse("1")},
			wantRequests: corev1.ResourceList{"nvidia.com/mig-3g.40gb": resource.MustParse("1")},
		},
		"user CPU and memory are kept beside the GPUs": {
			model: makeModel(name).GPUs("h100", 4).
				Request(corev1.ResourceCPU, "8").Request(corev1.ResourceMemory, "64Gi").Limit(corev1.ResourceMemory, "96Gi").Obj(),
			pool: makePool("h100").Obj(),
			wantLimits: corev1.ResourceList{
				corev1.ResourceMemory: resource.MustParse("96Gi"), "nvidia.com/gpu": resource.MustParse("4"),
			},
			wantRequests: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("64Gi"),
				"nvidia.com/gpu": resource.MustParse("4"),
			},
		},
		"DRA: a claim from the template, no extended resource": {
			model:               makeModel(name).GPUs("dra", 4).Request(corev1.ResourceCPU, "2").Obj(),
			pool:                makePool("dra").DeviceClass("gpu.nvidia.com").Obj(),
			wantRequests:        corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")},
			wantPodClaims:       []corev1.PodResourceClaim{{Name: "gpus", ResourceClaimTemplateName: ptr.To("llama-gpus")}},
			wantContainerClaims: []corev1.ResourceClaim{{Name: "gpus"}},
		},
		"CPU-only: no GPUs at all": {
			model:        makeModel(name).Request(corev1.ResourceCPU, "4").Obj(),
			wantRequests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4")},
		},
	}
	for desc, tc := range cases {
		t.Run(desc, func(t *testing.T) {
			before := tc.model.DeepCopy()
			dep := mustDeployment(t, desiredFor(tc.model, tc.pool, 1))
			pod := dep.Spec.Template.Spec
			engine := findContainer(t, pod.Containers, containerEngine)
			if diff := cmp.Diff(tc.wantLimits, engine.Resources.Limits); diff != "" {
				t.Errorf("engine limits (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantRequests, engine.Resources.Requests); diff != "" {
				t.Errorf("engine requests (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantContainerClaims, engine.Resources.Claims); diff != "" {
				t.Errorf("engine resources.claims (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantPodClaims, pod.ResourceClaims); diff != "" {
				t.Errorf("pod resourceClaims (-want +got):\n%s", diff)
			}
			// Only the engine gets GPUs: the runtime and fetcher must not hold any.
			for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
				if c.Name == containerEngine {
					continue
				}
				for _, rl := range []corev1.ResourceList{c.Resources.Limits, c.Resources.Requests} {
					for r := range rl {
						if strings.Contains(string(r), "nvidia.com") {
							t.Errorf("container %s requests %s", c.Name, r)
						}
					}
				}
				if len(c.Resources.Claims) != 0 {
					t.Errorf("container %s has resource claims %v", c.Name, c.Resources.Claims)
				}
			}
			// The builder must not write the GPU resource into the model it was given.
			if diff := cmp.Diff(before, tc.model); diff != "" {
				t.Errorf("deployment() mutated the model (-before +after):\n%s", diff)
			}
		})
	}
}

func TestResourceClaimTemplate(t *testing.T) {
	cases := map[string]struct {
		model *servingv1alpha1.InferenceModel
		pool  *servingv1alpha1.GPUPool
		want  resourcev1.ResourceClaimSpec
	}{
		"one device": {
			model: makeModel("small").GPUs("dra", 1).Obj(),
			pool:  makePool("dra").DeviceClass("gpu.nvidia.com").Obj(),
			want: resourcev1.ResourceClaimSpec{Devices: resourcev1.DeviceClaim{Requests: []resourcev1.DeviceRequest{{
				Name: "gpu",
				Exactly: &resourcev1.ExactDeviceRequest{
					DeviceClassName: "gpu.nvidia.com", AllocationMode: resourcev1.DeviceAllocationModeExactCount, Count: 1,
				},
			}}}},
		},
		"eight MIG devices": {
			model: makeModel("big").GPUs("mig", 8).Obj(),
			pool:  makePool("mig").DeviceClass("mig.nvidia.com").Obj(),
			want: resourcev1.ResourceClaimSpec{Devices: resourcev1.DeviceClaim{Requests: []resourcev1.DeviceRequest{{
				Name: "gpu",
				Exactly: &resourcev1.ExactDeviceRequest{
					DeviceClassName: "mig.nvidia.com", AllocationMode: resourcev1.DeviceAllocationModeExactCount, Count: 8,
				},
			}}}},
		},
	}
	for desc, tc := range cases {
		t.Run(desc, func(t *testing.T) {
			d := desiredFor(tc.model, tc.pool, 1)
			if !d.usesDRA() {
				t.Fatal("usesDRA() = false for a pool with a deviceClassName")
			}
			rct := d.resourceClaimTemplate()
			if diff := cmp.Diff(tc.want, rct.Spec.Spec); diff != "" {
				t.Errorf("claim spec (-want +got):\n%s", diff)
			}
			wantName := tc.model.Name + "-gpus"
			if rct.Name != wantName || rct.Namespace != builderTestNamespace {
				t.Errorf("template is %s/%s, want %s/%s", rct.Namespace, rct.Name, builderTestNamespace, wantName)
			}
			// The pod must point at this very template.
			pod := mustDeployment(t, d).Spec.Template.Spec
			if len(pod.ResourceClaims) != 1 || ptr.Deref(pod.ResourceClaims[0].ResourceClaimTemplateName, "") != rct.Name {
				t.Errorf("pod resourceClaims %+v do not reference template %q", pod.ResourceClaims, rct.Name)
			}
		})
	}
	t.Run("no DRA without deviceClassName or without GPUs", func(t *testing.T) {
		for _, d := range []modelDesired{
			desiredFor(makeModel("ext").GPUs("h100", 2).Obj(), makePool("h100").Obj(), 1),
			desiredFor(makeModel("cpu").Obj(), nil, 1),
			desiredFor(makeModel("zero").Obj(), makePool("dra").DeviceClass("gpu.nvidia.com").Obj(), 1),
		} {
			if d.usesDRA() {
				t.Errorf("%s: usesDRA() = true", d.model.Name)
			}
		}
	})
}

// nodeSelectorMatches evaluates a required node affinity the way the scheduler does: the
// node must match one term, and all requirements of that term.
func nodeSelectorMatches(t *testing.T, ns *corev1.NodeSelector, nodeLabels map[string]string) bool {
	t.Helper()
	ops := map[corev1.NodeSelectorOperator]selection.Operator{
		corev1.NodeSelectorOpIn: selection.In, corev1.NodeSelectorOpNotIn: selection.NotIn,
		corev1.NodeSelectorOpExists: selection.Exists, corev1.NodeSelectorOpDoesNotExist: selection.DoesNotExist,
	}
	for _, term := range ns.NodeSelectorTerms {
		sel := labels.NewSelector()
		for _, r := range term.MatchExpressions {
			op, ok := ops[r.Operator]
			if !ok {
				t.Fatalf("unexpected node selector operator %q", r.Operator)
			}
			req, err := labels.NewRequirement(r.Key, op, r.Values)
			if err != nil {
				t.Fatalf("invalid node selector requirement %+v: %v", r, err)
			}
			sel = sel.Add(*req)
		}
		if len(term.MatchFields) != 0 {
			t.Fatalf("unexpected matchFields %+v", term.MatchFields)
		}
		if sel.Matches(labels.Set(nodeLabels)) {
			return true
		}
	}
	return false
}

func TestDeploymentAffinity(t *testing.T) {
	nodes := map[string]map[string]string{
		"h100-a":   {"pool": "h100", "nvidia.com/gpu.product": "H100", "zone": "a"},
		"h100-b":   {"pool": "h100", "nvidia.com/gpu.product": "H100", "zone": "b"},
		"h100-bad": {"pool": "h100", "nvidia.com/gpu.product": "H100", "zone": "a", "maintenance": "true"},
		"a100":     {"pool": "a100", "nvidia.com/gpu.product": "A100", "zone": "a"},
		"cpu":      {"zone": "a"},
	}
	noSchedule := corev1.Toleration{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
	dedicated := corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "inference", Effect: corev1.TaintEffectNoExecute}
	cases := map[string]struct {
		pool            *servingv1alpha1.GPUPool
		wantAffinity    *corev1.Affinity
		wantTolerations []corev1.Toleration
	}{
		"matchLabels become In requirements, sorted by key": {
			pool: makePool("h100").NodeLabel("pool", "h100").NodeLabel("nvidia.com/gpu.product", "H100").Toleration(noSchedule).Obj(),
			wantAffinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
					{Key: "nvidia.com/gpu.product", Operator: corev1.NodeSelectorOpIn, Values: []string{"H100"}},
					{Key: "pool", Operator: corev1.NodeSelectorOpIn, Values: []string{"h100"}},
				}}},
			}}},
			wantTolerations: []corev1.Toleration{noSchedule},
		},
		"matchExpressions keep In, NotIn, Exists and DoesNotExist": {
			pool: makePool("h100").
				NodeExpression("pool", metav1.LabelSelectorOpIn, "h100", "h100-spare").
				NodeExpression("zone", metav1.LabelSelectorOpNotIn, "c").
				NodeExpression("nvidia.com/gpu.product", metav1.LabelSelectorOpExists).
				NodeExpression("maintenance", metav1.LabelSelectorOpDoesNotExist).
				Toleration(noSchedule).Toleration(dedicated).Obj(),
			wantAffinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
					{Key: "pool", Operator: corev1.NodeSelectorOpIn, Values: []string{"h100", "h100-spare"}},
					{Key: "zone", Operator: corev1.NodeSelectorOpNotIn, Values: []string{"c"}},
					{Key: "nvidia.com/gpu.product", Operator: corev1.NodeSelectorOpExists},
					{Key: "maintenance", Operator: corev1.NodeSelectorOpDoesNotExist},
				}}},
			}}},
			wantTolerations: []corev1.Toleration{noSchedule, dedicated},
		},
		"matchLabels and matchExpressions are ANDed in one term": {
			pool: makePool("h100").NodeLabel("pool", "h100").NodeExpression("zone", metav1.LabelSelectorOpIn, "b").Obj(),
			wantAffinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
					{Key: "pool", Operator: corev1.NodeSelectorOpIn, Values: []string{"h100"}},
					{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"b"}},
				}}},
			}}},
		},
		"empty selector: any node, no affinity": {
			pool: makePool("all").Obj(),
		},
		"CPU-only: no affinity, no tolerations": {},
	}
	for desc, tc := range cases {
		t.Run(desc, func(t *testing.T) {
			m := makeModel("llama").Obj()
			if tc.pool != nil {
				m = makeModel("llama").GPUs(tc.pool.Name, 1).Obj()
			}
			pod := mustDeployment(t, desiredFor(m, tc.pool, 2)).Spec.Template.Spec
			if diff := cmp.Diff(tc.wantAffinity, pod.Affinity); diff != "" {
				t.Errorf("affinity (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantTolerations, pod.Tolerations); diff != "" {
				t.Errorf("tolerations (-want +got):\n%s", diff)
			}
			if len(pod.NodeSelector) != 0 {
				t.Errorf("nodeSelector = %v, want none (the affinity carries the pool's selector)", pod.NodeSelector)
			}
			if tc.pool == nil {
				return
			}
			// The affinity must admit exactly the nodes the pool selects.
			poolSel, err := metav1.LabelSelectorAsSelector(&tc.pool.Spec.NodeSelector)
			if err != nil {
				t.Fatal(err)
			}
			for node, lbls := range nodes {
				want := poolSel.Matches(labels.Set(lbls))
				got := true
				if pod.Affinity != nil {
					got = nodeSelectorMatches(t, pod.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution, lbls)
				}
				if got != want {
					t.Errorf("node %s: pod may schedule = %v, pool selects it = %v", node, got, want)
				}
			}
		})
	}
}

func TestDeploymentTopologySpread(t *testing.T) {
	for desc, pool := range map[string]*servingv1alpha1.GPUPool{"GPU": makePool("h100").NodeLabel("pool", "h100").Obj(), "CPU-only": nil} {
		t.Run(desc, func(t *testing.T) {
			m := makeModel("llama").Obj()
			if pool != nil {
				m = makeModel("llama").GPUs(pool.Name, 1).Obj()
			}
			tmpl := mustDeployment(t, desiredFor(m, pool, 3)).Spec.Template
			want := []corev1.TopologySpreadConstraint{{
				MaxSkew:           1,
				TopologyKey:       "kubernetes.io/hostname",
				WhenUnsatisfiable: corev1.ScheduleAnyway,
				LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{
					"app.kubernetes.io/managed-by": "helixflow", "serving.helixflow.io/inference-model": "llama",
				}},
			}}
			if diff := cmp.Diff(want, tmpl.Spec.TopologySpreadConstraints); diff != "" {
				t.Errorf("topology spread (-want +got):\n%s", diff)
			}
			sel, err := metav1.LabelSelectorAsSelector(tmpl.Spec.TopologySpreadConstraints[0].LabelSelector)
			if err != nil {
				t.Fatal(err)
			}
			if !sel.Matches(labels.Set(tmpl.Labels)) {
				t.Errorf("spread selector %s does not select the model's own pods %v", sel, tmpl.Labels)
			}
		})
	}
}

func TestPodSecurityRestricted(t *testing.T) {
	evaluate := restrictedEvaluator(t)

	cases := map[string]struct {
		model *servingv1alpha1.InferenceModel
		pool  *servingv1alpha1.GPUPool
		// wantInit is the number of init containers, so the init path is known to be checked.
		wantInit int
	}{
		"GPU model with a fetch init container and credentials": {
			model:    makeModel("gpu").GPUs("h100", 2).Revision("main").Credentials("hf-token").Obj(),
			pool:     makePool("h100").NodeLabel("pool", "h100").Toleration(corev1.Toleration{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists}).Obj(),
			wantInit: 1,
		},
		"DRA GPU model": {
			model:    makeModel("dra").Engine(servingv1alpha1.EngineSGLang).GPUs("dra", 4).Obj(),
			pool:     makePool("dra").DeviceClass("gpu.nvidia.com").Obj(),
			wantInit: 1,
		},
		"CPU-only model": {
			model:    makeModel("cpu").Engine(servingv1alpha1.EngineLlamaCpp).URI("s3://models/llama").Obj(),
			wantInit: 1,
		},
		"Ollama model": {
			model:    makeModel("ollama").Engine(servingv1alpha1.EngineOllama).URI("oci://registry.test/models/llama:8b").Obj(),
			wantInit: 1,
		},
		"pvc:// model": {
			model:    makeModel("pvc").URI("pvc://weights/llama-3.1-8b").GPUs("h100", 1).Obj(),
			pool:     makePool("h100").Obj(),
			wantInit: 0,
		},
		"Custom engine": {
			model:    makeModel("custom").Engine(servingv1alpha1.EngineCustom).Image("example.test/engine:1").GPUs("h100", 1).Obj(),
			pool:     makePool("h100").Obj(),
			wantInit: 1,
		},
	}
	for desc, tc := range cases {
		t.Run(desc, func(t *testing.T) {
			tmpl := mustDeployment(t, desiredFor(tc.model, tc.pool, 1)).Spec.Template
			if got := len(tmpl.Spec.InitContainers); got != tc.wantInit {
				t.Fatalf("%d init containers, want %d", got, tc.wantInit)
			}
			if res := evaluate(&tmpl); !res.Allowed {
				t.Errorf("pod violates PSS restricted: %s", res.ForbiddenDetail())
			}
			// Also by hand, per container, so a pod-level default can't hide a container's gap.
			all := append(slices.Clone(tmpl.Spec.InitContainers), tmpl.Spec.Containers...)
			for _, c := range all {
				sc := c.SecurityContext
				if sc == nil {
					t.Errorf("container %s has no securityContext", c.Name)
					continue
				}
				if !ptr.Deref(sc.RunAsNonRoot, false) || ptr.Deref(sc.AllowPrivilegeEscalation, true) ||
					sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
					sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault ||
					ptr.Deref(sc.Privileged, false) {
					t.Errorf("container %s securityContext is not restricted: %+v", c.Name, sc)
				}
			}
			spec := tmpl.Spec
			if spec.HostNetwork || spec.HostPID || spec.HostIPC {
				t.Error("pod uses a host namespace")
			}
			for _, v := range spec.Volumes {
				if v.HostPath != nil {
					t.Errorf("volume %s is a hostPath", v.Name)
				}
			}
		})
	}

	// Controls: the evaluator must catch a violation in an init and in a regular container
	// of the very pods built above, or passing the checks above would prove nothing.
	controls := map[string]func(*corev1.PodSpec){
		"init container may escalate": func(s *corev1.PodSpec) {
			s.InitContainers[0].SecurityContext.AllowPrivilegeEscalation = ptr.To(true)
		},
		"engine keeps capabilities": func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext.Capabilities = nil
		},
		"runtime runs as root": func(s *corev1.PodSpec) {
			s.Containers[1].SecurityContext.RunAsNonRoot = ptr.To(false)
		},
		"hostPath volume": func(s *corev1.PodSpec) {
			s.Volumes = append(s.Volumes, corev1.Volume{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}})
		},
	}
	for desc, mutate := range controls {
		t.Run("control: "+desc, func(t *testing.T) {
			tmpl := mustDeployment(t, desiredFor(makeModel("gpu").GPUs("h100", 1).Obj(), makePool("h100").Obj(), 1)).Spec.Template
			mutate(&tmpl.Spec)
			if res := evaluate(&tmpl); res.Allowed {
				t.Error("the restricted evaluator allowed a violating pod")
			}
		})
	}
}

func TestDeploymentPVCAndFetch(t *testing.T) {
	const credsDir = "/var/run/secrets/helixflow/credentials"
	cases := map[string]struct {
		model *servingv1alpha1.InferenceModel
		// wantFetchArgs is nil when no fetch init container may exist.
		wantFetchArgs []string
		wantModels    corev1.VolumeSource
		// wantEngineArg is the engine argument naming the weights' folder.
		wantEngineArg  string
		wantCredential string
	}{
		"pvc:// with a path: no fetch, read-only claim": {
			model:         makeModel("llama").URI("pvc://llama-weights/meta/llama-3.1-8b").Obj(),
			wantModels:    corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "llama-weights", ReadOnly: true}},
			wantEngineArg: "--model=/models/meta/llama-3.1-8b",
		},
		"pvc:// without a path: the claim's root": {
			model:         makeModel("llama").Engine(servingv1alpha1.EngineTGI).URI("pvc://weights").Obj(),
			wantModels:    corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "weights", ReadOnly: true}},
			wantEngineArg: "--model-id=/models",
		},
		"hf:// with revision and credentials": {
			model: makeModel("llama").URI("hf://meta-llama/Llama-3.1-8B-Instruct").Revision("0e9e39f").Credentials("hf-token").Obj(),
			wantFetchArgs: []string{"fetch", "--uri=hf://meta-llama/Llama-3.1-8B-Instruct", "--dest=/models/llama",
				"--revision=0e9e39f", "--format=safetensors", "--credentials-dir=" + credsDir},
			wantModels:     corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
			wantEngineArg:  "--model=/models/llama",
			wantCredential: "hf-token",
		},
		"s3:// without revision or credentials": {
			model:         makeModel("mistral").Engine(servingv1alpha1.EngineSGLang).URI("s3://models/mistral-7b").Obj(),
			wantFetchArgs: []string{"fetch", "--uri=s3://models/mistral-7b", "--dest=/models/mistral", "--format=safetensors"},
			wantModels:    corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
			wantEngineArg: "--model-path=/models/mistral",
		},
		"oci:// with credentials": {
			model:          makeModel("phi").Engine(servingv1alpha1.EngineLlamaCpp).URI("oci://registry.test/models/phi:3").Credentials("registry-auth").Obj(),
			wantFetchArgs:  []string{"fetch", "--uri=oci://registry.test/models/phi:3", "--dest=/models/phi", "--format=gguf", "--credentials-dir=" + credsDir},
			wantModels:     corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
			wantEngineArg:  "/models/phi/.helixflow-model.gguf",
			wantCredential: "registry-auth",
		},
	}
	for desc, tc := range cases {
		t.Run(desc, func(t *testing.T) {
			pod := mustDeployment(t, desiredFor(tc.model, nil, 1)).Spec.Template.Spec
			models := findVolume(t, pod.Volumes, "models")
			if diff := cmp.Diff(tc.wantModels, models.VolumeSource); diff != "" {
				t.Errorf("models volume (-want +got):\n%s", diff)
			}
			engine := findContainer(t, pod.Containers, containerEngine)
			if !slices.Contains(engine.Args, tc.wantEngineArg) {
				t.Errorf("engine args %v lack %q", engine.Args, tc.wantEngineArg)
			}
			if !hasMount(engine, corev1.VolumeMount{Name: "models", MountPath: "/models", ReadOnly: true}) {
				t.Errorf("engine mounts %v lack models read-only at /models", engine.VolumeMounts)
			}

			if tc.wantFetchArgs == nil {
				if len(pod.InitContainers) != 0 {
					t.Errorf("init containers %v, want none for pvc://", pod.InitContainers)
				}
			} else {
				if len(pod.InitContainers) != 1 {
					t.Fatalf("%d init containers, want the fetcher only", len(pod.InitContainers))
				}
				fetch := pod.InitContainers[0]
				if fetch.Name != containerFetch || fetch.Image != builderTestConfig.RuntimeImage {
					t.Errorf("init container %s runs %q, want fetch running %q", fetch.Name, fetch.Image, builderTestConfig.RuntimeImage)
				}
				if diff := cmp.Diff(tc.wantFetchArgs, fetch.Args); diff != "" {
					t.Errorf("fetch args (-want +got):\n%s", diff)
				}
				if !hasMount(fetch, corev1.VolumeMount{Name: "models", MountPath: "/models"}) {
					t.Errorf("fetch mounts %v lack models writable at /models", fetch.VolumeMounts)
				}
				// The engine reads exactly where the fetcher wrote.
				dest := strings.TrimPrefix(tc.wantFetchArgs[2], "--dest=")
				if !slices.ContainsFunc(engine.Args, func(a string) bool {
					return a == dest || strings.HasSuffix(a, "="+dest) || a == dest+"/.helixflow-model.gguf"
				}) {
					t.Errorf("engine args %v do not read the fetch destination %s", engine.Args, dest)
				}
			}

			// The credentials Secret: a volume only when referenced, mounted only into the fetcher.
			var creds *corev1.Volume
			for i := range pod.Volumes {
				if pod.Volumes[i].Secret != nil {
					creds = &pod.Volumes[i]
				}
			}
			switch {
			case tc.wantCredential == "" && creds != nil:
				t.Errorf("secret volume %+v, want none", creds)
			case tc.wantCredential != "" && (creds == nil || creds.Secret.SecretName != tc.wantCredential):
				t.Errorf("secret volume %+v, want one of Secret %q", creds, tc.wantCredential)
			}
			for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
				mounted := false
				for _, vm := range c.VolumeMounts {
					if creds != nil && vm.Name == creds.Name {
						mounted = true
						if c.Name == containerFetch && (!vm.ReadOnly || vm.MountPath != credsDir) {
							t.Errorf("fetch mounts credentials at %s read-only=%v, want %s read-only", vm.MountPath, vm.ReadOnly, credsDir)
						}
					}
				}
				if wantMounted := c.Name == containerFetch && tc.wantCredential != ""; mounted != wantMounted {
					t.Errorf("container %s mounts the credentials = %v, want %v", c.Name, mounted, wantMounted)
				}
				for _, e := range c.EnvFrom {
					if e.SecretRef != nil {
						t.Errorf("container %s takes env from Secret %s", c.Name, e.SecretRef.Name)
					}
				}
			}
		})
	}
}

func TestServicePorts(t *testing.T) {
	m := makeModel("llama").GPUs("h100", 1).Obj()
	d := desiredFor(m, makePool("h100").Obj(), 2)
	svc := d.service()
	want := []corev1.ServicePort{
		{Name: "http", Port: 8080, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
		{Name: "grpc", Port: 9090, TargetPort: intstr.FromString("grpc"), Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("grpc")},
		{Name: "metrics", Port: 9100, TargetPort: intstr.FromString("metrics"), Protocol: corev1.ProtocolTCP},
	}
	if diff := cmp.Diff(want, svc.Spec.Ports); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
	wantSelector := map[string]string{"app.kubernetes.io/managed-by": "helixflow", "serving.helixflow.io/inference-model": "llama"}
	if diff := cmp.Diff(wantSelector, svc.Spec.Selector); diff != "" {
		t.Errorf("selector (-want +got):\n%s", diff)
	}
	if svc.Name != "llama" || svc.Namespace != builderTestNamespace {
		t.Errorf("service is %s/%s, want %s/llama", svc.Namespace, svc.Name, builderTestNamespace)
	}

	// Every named target port exists on the runtime container with the Service's number,
	// and the selector picks the Deployment's pods.
	tmpl := mustDeployment(t, d).Spec.Template
	runtime := findContainer(t, tmpl.Spec.Containers, containerRuntime)
	for _, p := range svc.Spec.Ports {
		i := slices.IndexFunc(runtime.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.TargetPort.StrVal })
		if i < 0 {
			t.Errorf("service port %s targets %q, which the runtime does not expose", p.Name, p.TargetPort.StrVal)
		} else if runtime.Ports[i].ContainerPort != p.Port {
			t.Errorf("service port %s is %d but the runtime listens on %d", p.Name, p.Port, runtime.Ports[i].ContainerPort)
		}
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(tmpl.Labels)) {
		t.Errorf("service selector %v does not select pod labels %v", svc.Spec.Selector, tmpl.Labels)
	}
}

func TestBuilderPodDisruptionBudget(t *testing.T) {
	d := desiredFor(makeModel("llama").GPUs("h100", 1).Obj(), makePool("h100").Obj(), 3)
	pdb := d.podDisruptionBudget()
	if diff := cmp.Diff(ptr.To(intstr.FromInt32(1)), pdb.Spec.MaxUnavailable); diff != "" {
		t.Errorf("maxUnavailable (-want +got):\n%s", diff)
	}
	if pdb.Spec.MinAvailable != nil {
		t.Errorf("minAvailable = %v, want unset (maxUnavailable only)", pdb.Spec.MinAvailable)
	}
	wantSelector := &metav1.LabelSelector{MatchLabels: map[string]string{
		"app.kubernetes.io/managed-by": "helixflow", "serving.helixflow.io/inference-model": "llama",
	}}
	if diff := cmp.Diff(wantSelector, pdb.Spec.Selector); diff != "" {
		t.Errorf("selector (-want +got):\n%s", diff)
	}
	dep := mustDeployment(t, d)
	if diff := cmp.Diff(dep.Spec.Selector, pdb.Spec.Selector); diff != "" {
		t.Errorf("PDB and Deployment select different pods (-deployment +pdb):\n%s", diff)
	}
}

func TestDeploymentStrategy(t *testing.T) {
	for _, replicas := range []int32{0, 1, 4} {
		t.Run(fmt.Sprintf("replicas=%d", replicas), func(t *testing.T) {
			d := desiredFor(makeModel("llama").GPUs("h100", 2).Obj(), makePool("h100").Obj(), replicas)
			dep := mustDeployment(t, d)
			if got := ptr.Deref(dep.Spec.Replicas, -1); got != replicas {
				t.Errorf("replicas = %d, want %d", got, replicas)
			}
			want := appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: ptr.To(intstr.FromInt32(1)),
					MaxSurge:       ptr.To(intstr.FromInt32(0)),
				},
			}
			if diff := cmp.Diff(want, dep.Spec.Strategy); diff != "" {
				t.Errorf("strategy (-want +got):\n%s", diff)
			}
			sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
			if err != nil {
				t.Fatal(err)
			}
			if sel.Empty() || !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
				t.Errorf("deployment selector %q does not select its template labels %v", sel, dep.Spec.Template.Labels)
			}
			if sa := d.serviceAccount(); dep.Spec.Template.Spec.ServiceAccountName != sa.Name {
				t.Errorf("pods run as service account %q, the builder makes %q", dep.Spec.Template.Spec.ServiceAccountName, sa.Name)
			}
		})
	}
}

func TestBuilderLabels(t *testing.T) {
	cases := map[string]struct {
		model    *servingv1alpha1.InferenceModel
		pool     *servingv1alpha1.GPUPool
		wantPool string
	}{
		"DRA GPU model": {
			model:    makeModel("llama").GPUs("dra", 2).Obj(),
			pool:     makePool("dra").DeviceClass("gpu.nvidia.com").Obj(),
			wantPool: "dra",
		},
		"CPU-only model": {model: makeModel("tiny").Obj()},
	}
	for desc, tc := range cases {
		t.Run(desc, func(t *testing.T) {
			d := desiredFor(tc.model, tc.pool, 2)
			dep := mustDeployment(t, d)
			objects := map[string]metav1.ObjectMeta{
				"ServiceAccount":      d.serviceAccount().ObjectMeta,
				"Service":             d.service().ObjectMeta,
				"PodDisruptionBudget": d.podDisruptionBudget().ObjectMeta,
				"Deployment":          dep.ObjectMeta,
			}
			if d.usesDRA() {
				objects["ResourceClaimTemplate"] = d.resourceClaimTemplate().ObjectMeta
			}
			for kind, om := range objects {
				if om.Namespace != tc.model.Namespace {
					t.Errorf("%s namespace = %q, want %q", kind, om.Namespace, tc.model.Namespace)
				}
			}
			objects["pod template"] = dep.Spec.Template.ObjectMeta
			for kind, om := range objects {
				for k, want := range map[string]string{
					"app.kubernetes.io/managed-by":         "helixflow",
					"serving.helixflow.io/inference-model": tc.model.Name,
				} {
					if got := om.Labels[k]; got != want {
						t.Errorf("%s label %s = %q, want %q", kind, k, got, want)
					}
				}
				if got := om.Labels["serving.helixflow.io/gpu-pool"]; got != tc.wantPool {
					t.Errorf("%s label serving.helixflow.io/gpu-pool = %q, want %q", kind, got, tc.wantPool)
				}
			}
			if tc.pool != nil && len(objects) != 6 {
				t.Errorf("got %d objects, want a ResourceClaimTemplate among them", len(objects))
			}
		})
	}
}

func TestWeightsCacheClaim(t *testing.T) {
	cached := func(m *servingv1alpha1.InferenceModel) corev1.PodSpec {
		d := desiredFor(m, nil, 2)
		d.cfg.WeightsCacheClaim = "weights-cache"
		return mustDeployment(t, d).Spec.Template.Spec
	}
	pod := cached(makeModel("llama").Obj())
	models := findVolume(t, pod.Volumes, "models")
	want := corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "weights-cache"}}
	if diff := cmp.Diff(want, models.VolumeSource); diff != "" {
		t.Errorf("models volume with a cache claim (-want +got):\n%s", diff)
	}
	if len(pod.InitContainers) != 1 || !hasMount(pod.InitContainers[0], corev1.VolumeMount{Name: "models", MountPath: "/models"}) {
		t.Errorf("the fetcher does not write into the cache: %+v", pod.InitContainers)
	}
	if !hasMount(findContainer(t, pod.Containers, containerEngine), corev1.VolumeMount{Name: "models", MountPath: "/models", ReadOnly: true}) {
		t.Error("the engine does not read the cache read-only")
	}
	if p := pod.SecurityContext.FSGroupChangePolicy; p == nil || *p != corev1.FSGroupChangeOnRootMismatch {
		t.Errorf("fsGroupChangePolicy = %v, want OnRootMismatch (no recursive chown of the cache at every start)", p)
	}
	// pvc:// models keep their own claim, read-only.
	pod = cached(makeModel("llama").URI("pvc://weights/llama").Obj())
	if v := findVolume(t, pod.Volumes, "models"); v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != "weights" || !v.PersistentVolumeClaim.ReadOnly {
		t.Errorf("pvc:// models volume = %+v", v.VolumeSource)
	}
}

// With a usage endpoint the runtime gets a projected ServiceAccount token for the usage
// aggregator's audience and the aggregator's CA certificate as published in the namespace
// (optional: the pod starts before the first publication), mounted into it alone, and the
// flags that name the files; without one, none of it.
func TestBuilderUsageToken(t *testing.T) {
	m := makeModel("llama").Obj()
	spec := mustDeployment(t, desiredFor(m, nil, 1)).Spec.Template.Spec
	runtime := findContainer(t, spec.Containers, containerRuntime)
	for _, want := range []string{"--usage-endpoint=usage.test:9443", "--usage-token-file=" + usageTokenDir + "/token",
		"--usage-ca-file=" + usageTokenDir + "/ca.crt"} {
		if !slices.Contains(runtime.Args, want) {
			t.Errorf("runtime args %v lack %s", runtime.Args, want)
		}
	}
	vol := findVolume(t, spec.Volumes, "usage-token")
	want := &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
		Audience: usage.TokenAudience, ExpirationSeconds: ptr.To[int64](3600), Path: "token"}}, {ConfigMap: &corev1.ConfigMapProjection{
		LocalObjectReference: corev1.LocalObjectReference{Name: auth.JWKSConfigMapName},
		Items:                []corev1.KeyToPath{{Key: usage.CAConfigMapKey, Path: "ca.crt"}}, Optional: ptr.To(true)}}}}
	if diff := cmp.Diff(want, vol.Projected); diff != "" {
		t.Errorf("usage-token volume (-want +got):\n%s", diff)
	}
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		i := slices.IndexFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == "usage-token" })
		switch {
		case c.Name == containerRuntime && (i < 0 || c.VolumeMounts[i].MountPath != usageTokenDir || !c.VolumeMounts[i].ReadOnly):
			t.Errorf("runtime mounts %v, want usage-token read-only at %s", c.VolumeMounts, usageTokenDir)
		case c.Name != containerRuntime && i >= 0:
			t.Errorf("container %s mounts the usage token", c.Name)
		}
	}

	cfg := builderTestConfig
	cfg.UsageEndpoint = ""
	spec = mustDeployment(t, modelDesired{model: m, replicas: 1, cfg: cfg}).Spec.Template.Spec
	runtime = findContainer(t, spec.Containers, containerRuntime)
	if slices.ContainsFunc(runtime.Args, func(a string) bool { return strings.HasPrefix(a, "--usage-") }) || len(runtime.VolumeMounts) != 0 ||
		slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == "usage-token" }) {
		t.Errorf("without a usage endpoint: args %v, mounts %v, volumes %v; want no usage flags or token", runtime.Args, runtime.VolumeMounts, spec.Volumes)
	}
}
