package controllers

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/auth"
	"github.com/helixflow/helixflow/internal/fetch"
	"github.com/helixflow/helixflow/internal/usage"
)

// Paths inside model pods.
const (
	modelsMountPath = "/models"
	cacheMountPath  = "/cache"
	tmpMountPath    = "/tmp"
	shmMountPath    = "/dev/shm"
	gpuClaimName    = "gpus"
	// usageTokenDir holds the runtime's ServiceAccount token for the usage aggregator, in
	// the file usageTokenFile, and the aggregator's CA certificate, in usageCAFile.
	usageTokenDir  = "/var/run/secrets/helixflow/usage"
	usageTokenFile = "token"
	usageCAFile    = "ca.crt"
	// usageTokenSeconds is that token's lifetime; the kubelet replaces it at 80%.
	usageTokenSeconds int64 = 3600
	// nonRootUID is the user every container runs as (PSS restricted needs non-root).
	nonRootUID int64 = 65532
)

// Container names in model pods.
const (
	containerFetch   = "fetch"
	containerEngine  = "engine"
	containerRuntime = "runtime"
)

// modelDesired is everything the InferenceModel's children are built from: the model, its
// pool (nil for CPU-only models) and the replicas to run (0 when placement says it cannot fit).
type modelDesired struct {
	model    *servingv1alpha1.InferenceModel
	pool     *servingv1alpha1.GPUPool
	replicas int32
	cfg      Config
	// keep is the existing Deployment to leave untouched when the model does not fit.
	keep *appsv1.Deployment
}

// selectorLabels select a model's pods; they never change after the Deployment exists.
func selectorLabels(m *servingv1alpha1.InferenceModel) map[string]string {
	return map[string]string{
		servingv1alpha1.LabelManagedBy:      servingv1alpha1.ManagedByValue,
		servingv1alpha1.LabelInferenceModel: m.Name,
	}
}

// objectLabels go on every child object and pod.
func (d modelDesired) objectLabels() map[string]string {
	l := selectorLabels(d.model)
	l[servingv1alpha1.LabelAppName] = servingv1alpha1.RuntimeAppName
	l["app.kubernetes.io/instance"] = d.model.Name
	if d.pool != nil {
		l[servingv1alpha1.LabelGPUPool] = d.pool.Name
	}
	return l
}

func (d modelDesired) meta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: d.model.Namespace, Labels: d.objectLabels()}
}

func (d modelDesired) serviceAccount() *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: d.meta(d.model.Name),
	}
}

// runtimeRole lets the pod's `runtime serve` read what it enforces: its own InferenceModel,
// the namespace's ApiKeys and the published JWKS. Nothing else, and nothing to write.
func (d modelDesired) runtimeRole() *rbacv1.Role {
	read := []string{"get", "list", "watch"}
	return &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
		ObjectMeta: d.meta(d.model.Name + "-runtime"),
		Rules: []rbacv1.PolicyRule{
			// resourceNames with list/watch work for a metadata.name field selector, which is
			// how the runtime watches these two.
			{APIGroups: []string{servingv1alpha1.GroupVersion.Group}, Resources: []string{"inferencemodels"}, ResourceNames: []string{d.model.Name}, Verbs: read},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{auth.JWKSConfigMapName}, Verbs: read},
			{APIGroups: []string{servingv1alpha1.GroupVersion.Group}, Resources: []string{"apikeys"}, Verbs: read},
		},
	}
}

func (d modelDesired) runtimeRoleBinding() *rbacv1.RoleBinding {
	name := d.model.Name + "-runtime"
	return &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
		ObjectMeta: d.meta(name),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: d.model.Name, Namespace: d.model.Namespace}},
	}
}

func (d modelDesired) service() *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: d.meta(d.model.Name),
		Spec: corev1.ServiceSpec{
			Selector: selectorLabels(d.model),
			Ports: []corev1.ServicePort{
				{Name: "http", Port: servingv1alpha1.RuntimeHTTPPort, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "grpc", Port: servingv1alpha1.RuntimeGRPCPort, TargetPort: intstr.FromString("grpc"), Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("grpc")},
				{Name: "metrics", Port: servingv1alpha1.RuntimeMetricsPort, TargetPort: intstr.FromString("metrics"), Protocol: corev1.ProtocolTCP},
			},
		},
	}
}

// podDisruptionBudget keeps all but one replica up during voluntary disruptions; only
// built when replicas > 1 (with one replica it would block node drains forever).
func (d modelDesired) podDisruptionBudget() *policyv1.PodDisruptionBudget {
	return &policyv1.PodDisruptionBudget{
		TypeMeta:   metav1.TypeMeta{APIVersion: "policy/v1", Kind: "PodDisruptionBudget"},
		ObjectMeta: d.meta(d.model.Name),
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: ptr.To(intstr.FromInt32(1)),
			Selector:       &metav1.LabelSelector{MatchLabels: selectorLabels(d.model)},
		},
	}
}

// usesDRA is true when GPUs are claimed through a DeviceClass instead of an extended resource.
func (d modelDesired) usesDRA() bool {
	return d.pool != nil && d.pool.Spec.DeviceClassName != "" && d.model.Spec.GPU.Count > 0
}

func claimTemplateName(m *servingv1alpha1.InferenceModel) string { return m.Name + "-gpus" }

// resourceClaimTemplate asks DRA for gpu.count devices of the pool's DeviceClass.
func (d modelDesired) resourceClaimTemplate() *resourcev1.ResourceClaimTemplate {
	return &resourcev1.ResourceClaimTemplate{
		TypeMeta:   metav1.TypeMeta{APIVersion: "resource.k8s.io/v1", Kind: "ResourceClaimTemplate"},
		ObjectMeta: d.meta(claimTemplateName(d.model)),
		Spec: resourcev1.ResourceClaimTemplateSpec{
			Spec: resourcev1.ResourceClaimSpec{
				Devices: resourcev1.DeviceClaim{
					Requests: []resourcev1.DeviceRequest{{
						Name: "gpu",
						Exactly: &resourcev1.ExactDeviceRequest{
							DeviceClassName: d.pool.Spec.DeviceClassName,
							AllocationMode:  resourcev1.DeviceAllocationModeExactCount,
							Count:           int64(d.model.Spec.GPU.Count),
						},
					}},
				},
			},
		},
	}
}

func (d modelDesired) deployment() (*appsv1.Deployment, error) {
	pod, err := d.podTemplate()
	if err != nil {
		return nil, err
	}
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: d.meta(d.model.Name),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(d.replicas),
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(d.model)},
			// Surge would need spare GPUs a full pool rarely has; replace one pod at a time.
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: ptr.To(intstr.FromInt32(1)),
					MaxSurge:       ptr.To(intstr.FromInt32(0)),
				},
			},
			Template: pod,
		},
	}, nil
}

func (d modelDesired) podTemplate() (corev1.PodTemplateSpec, error) {
	m := d.model
	engine, err := d.engineContainer()
	if err != nil {
		return corev1.PodTemplateSpec{}, err
	}
	spec := corev1.PodSpec{
		ServiceAccountName: m.Name,
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot:   ptr.To(true),
			RunAsUser:      ptr.To(nonRootUID),
			RunAsGroup:     ptr.To(nonRootUID),
			FSGroup:        ptr.To(nonRootUID),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		InitContainers:                d.fetchContainers(),
		Containers:                    []corev1.Container{engine, d.runtimeContainer()},
		Volumes:                       d.volumes(),
		TerminationGracePeriodSeconds: ptr.To[int64](60),
		TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
			MaxSkew:     1,
			TopologyKey: corev1.LabelHostname,
			// ScheduleAnyway: packing replicas onto one big node beats leaving them Pending.
			WhenUnsatisfiable: corev1.ScheduleAnyway,
			LabelSelector:     &metav1.LabelSelector{MatchLabels: selectorLabels(m)},
		}},
	}
	if _, _, onPVC := pvcSource(m.Spec.Model.URI); !onPVC && d.cfg.WeightsCacheClaim != "" {
		// A cache holds many GB: change its group once, not on every pod start.
		spec.SecurityContext.FSGroupChangePolicy = ptr.To(corev1.FSGroupChangeOnRootMismatch)
	}
	if d.pool != nil {
		spec.Tolerations = d.pool.Spec.Tolerations
		if aff := nodeAffinity(d.pool.Spec.NodeSelector); aff != nil {
			spec.Affinity = &corev1.Affinity{NodeAffinity: aff}
		}
	}
	if d.usesDRA() {
		spec.ResourceClaims = []corev1.PodResourceClaim{{Name: gpuClaimName, ResourceClaimTemplateName: ptr.To(claimTemplateName(m))}}
	}
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: d.objectLabels()},
		Spec:       spec,
	}, nil
}

// nodeAffinity turns the pool's LabelSelector into a required node affinity. The operators
// of LabelSelector (In, NotIn, Exists, DoesNotExist) exist with the same names for nodes.
func nodeAffinity(sel metav1.LabelSelector) *corev1.NodeAffinity {
	var reqs []corev1.NodeSelectorRequirement
	for _, k := range sortedKeys(sel.MatchLabels) {
		reqs = append(reqs, corev1.NodeSelectorRequirement{Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{sel.MatchLabels[k]}})
	}
	for _, e := range sel.MatchExpressions {
		reqs = append(reqs, corev1.NodeSelectorRequirement{Key: e.Key, Operator: corev1.NodeSelectorOperator(e.Operator), Values: e.Values})
	}
	if len(reqs) == 0 {
		return nil
	}
	return &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: reqs}},
	}}
}

// restrictedContext passes Pod Security Standards "restricted" for every container.
func restrictedContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false),
		RunAsNonRoot:             ptr.To(true),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// pvcSource splits pvc://<claim>/<path>; ok is false for other schemes.
func pvcSource(uri string) (claim, subPath string, ok bool) {
	rest, ok := strings.CutPrefix(uri, "pvc://")
	if !ok {
		return "", "", false
	}
	claim, subPath, _ = strings.Cut(rest, "/")
	return claim, subPath, true
}

// modelDir is where the engine reads the weights.
func modelDir(m *servingv1alpha1.InferenceModel) string {
	if _, sub, ok := pvcSource(m.Spec.Model.URI); ok {
		return path.Join(modelsMountPath, sub)
	}
	return path.Join(modelsMountPath, m.Name)
}

func (d modelDesired) volumes() []corev1.Volume {
	models := corev1.Volume{Name: "models", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
	if claim, _, ok := pvcSource(d.model.Spec.Model.URI); ok {
		models.VolumeSource = corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim, ReadOnly: true}}
	} else if d.cfg.WeightsCacheClaim != "" {
		// The fetcher writes there (its lock makes replicas sharing it take turns, and its
		// completion marker makes every later fetch a no-op); the engine mounts it read-only.
		models.VolumeSource = corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: d.cfg.WeightsCacheClaim}}
	}
	vols := []corev1.Volume{
		models,
		{Name: "cache", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		// Engines share tensors between workers through /dev/shm; the default 64Mi is too small.
		{Name: "shm", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
	}
	if ref := d.model.Spec.Model.CredentialsSecretRef; ref != nil {
		vols = append(vols, corev1.Volume{Name: "credentials", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: ref.Name}}})
	}
	if d.cfg.UsageEndpoint != "" {
		// The runtime proves to the usage aggregator which pod (and so namespace) it reports
		// for with a token of the pod's ServiceAccount, bound to the pod, that only the
		// aggregator accepts; it sends it over TLS, verifying the aggregator with the CA the
		// manager publishes in the namespace. Optional: the pod starts before the first
		// publication, and the runtime keeps its counts until the file appears.
		vols = append(vols, corev1.Volume{Name: "usage-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: usage.TokenAudience, ExpirationSeconds: ptr.To(usageTokenSeconds), Path: usageTokenFile,
			}}, {ConfigMap: &corev1.ConfigMapProjection{
				LocalObjectReference: corev1.LocalObjectReference{Name: auth.JWKSConfigMapName},
				Items:                []corev1.KeyToPath{{Key: usage.CAConfigMapKey, Path: usageCAFile}},
				Optional:             ptr.To(true),
			}}},
		}}})
	}
	return vols
}

// fetchContainers downloads the weights before the engine starts; pvc:// needs none.
func (d modelDesired) fetchContainers() []corev1.Container {
	m := d.model
	if _, _, ok := pvcSource(m.Spec.Model.URI); ok {
		return nil
	}
	args := []string{"fetch", "--uri=" + m.Spec.Model.URI, "--dest=" + modelDir(m)}
	if m.Spec.Model.Revision != "" {
		args = append(args, "--revision="+m.Spec.Model.Revision)
	}
	if f := weightsFormat(m.Spec.Engine.Type); f != "" {
		args = append(args, "--format="+f)
	}
	c := corev1.Container{
		Name:            containerFetch,
		Image:           d.cfg.RuntimeImage,
		Args:            args,
		SecurityContext: restrictedContext(),
		VolumeMounts: []corev1.VolumeMount{
			{Name: "models", MountPath: modelsMountPath},
			{Name: "tmp", MountPath: tmpMountPath},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if m.Spec.Model.CredentialsSecretRef != nil {
		c.Args = append(c.Args, "--credentials-dir=/var/run/secrets/helixflow/credentials")
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "credentials", MountPath: "/var/run/secrets/helixflow/credentials", ReadOnly: true})
	}
	return []corev1.Container{c}
}

func (d modelDesired) engineContainer() (corev1.Container, error) {
	m := d.model
	image, err := d.cfg.engineImage(m)
	if err != nil {
		return corev1.Container{}, err
	}
	c := corev1.Container{
		Name:            containerEngine,
		Image:           image,
		SecurityContext: restrictedContext(),
		Resources:       *m.Spec.Resources.DeepCopy(),
		Env: append([]corev1.EnvVar{
			{Name: "HOME", Value: tmpMountPath},
			{Name: "HF_HOME", Value: cacheMountPath},
			{Name: "XDG_CACHE_HOME", Value: cacheMountPath},
		}, m.Spec.Engine.Env...),
		VolumeMounts: []corev1.VolumeMount{
			{Name: "models", MountPath: modelsMountPath, ReadOnly: true},
			{Name: "cache", MountPath: cacheMountPath},
			{Name: "tmp", MountPath: tmpMountPath},
			{Name: "shm", MountPath: shmMountPath},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	c.Command, c.Args = engineCommand(m)
	if m.Spec.Engine.Type == servingv1alpha1.EngineOllama {
		c.Env = append(c.Env,
			corev1.EnvVar{Name: "OLLAMA_HOST", Value: fmt.Sprintf("127.0.0.1:%d", m.Spec.Engine.Port)},
			corev1.EnvVar{Name: "OLLAMA_MODELS", Value: modelDir(m)})
	}
	if n := m.Spec.GPU.Count; n > 0 && d.pool != nil {
		if d.usesDRA() {
			c.Resources.Claims = []corev1.ResourceClaim{{Name: gpuClaimName}}
		} else {
			qty := *resourceQuantity(int64(n))
			name := corev1.ResourceName(d.pool.Spec.ResourceName)
			if c.Resources.Limits == nil {
				c.Resources.Limits = corev1.ResourceList{}
			}
			if c.Resources.Requests == nil {
				c.Resources.Requests = corev1.ResourceList{}
			}
			c.Resources.Limits[name] = qty
			c.Resources.Requests[name] = qty
		}
	}
	return c, nil
}

// weightsFormat is the weights format each engine loads, so a repository that carries
// several (safetensors and .bin, or every GGUF quantization) is fetched once, not twice.
func weightsFormat(e servingv1alpha1.EngineType) string {
	switch e {
	case servingv1alpha1.EngineVLLM, servingv1alpha1.EngineTGI, servingv1alpha1.EngineSGLang:
		return string(fetch.FormatSafetensors)
	case servingv1alpha1.EngineLlamaCpp:
		return string(fetch.FormatGGUF)
	}
	return "" // Ollama and Custom: everything
}

// engineCommand returns the command and arguments per engine type. Engines listen on
// 127.0.0.1 where they allow it, so only the runtime (which authenticates) is reachable.
func engineCommand(m *servingv1alpha1.InferenceModel) (command, args []string) {
	port := strconv.Itoa(int(m.Spec.Engine.Port))
	dir := modelDir(m)
	name := m.ServedModelName()
	gpus := strconv.Itoa(int(max(m.Spec.GPU.Count, 1)))
	switch m.Spec.Engine.Type {
	case servingv1alpha1.EngineVLLM:
		args = []string{"--model=" + dir, "--served-model-name=" + name, "--host=127.0.0.1", "--port=" + port, "--tensor-parallel-size=" + gpus}
	case servingv1alpha1.EngineLlamaCpp:
		// llama.cpp takes a file: the fetcher links the GGUF it fetched to a fixed name; a
		// pvc:// URI names the file itself.
		file := dir
		if _, _, onPVC := pvcSource(m.Spec.Model.URI); !onPVC {
			file = path.Join(dir, fetch.GGUFLink)
		}
		args = []string{"--model", file, "--alias", name, "--host", "127.0.0.1", "--port", port}
		if m.Spec.GPU.Count > 0 {
			args = append(args, "--n-gpu-layers", "999")
		}
	case servingv1alpha1.EngineTGI:
		args = []string{"--model-id=" + dir, "--hostname=127.0.0.1", "--port=" + port, "--num-shard=" + gpus}
	case servingv1alpha1.EngineSGLang:
		command = []string{"python3", "-m", "sglang.launch_server"}
		args = []string{"--model-path=" + dir, "--served-model-name=" + name, "--host=127.0.0.1", "--port=" + port, "--tp=" + gpus}
	case servingv1alpha1.EngineOllama:
		// Ollama takes its address and model folder from OLLAMA_HOST and OLLAMA_MODELS.
		args = []string{"serve"}
	}
	return command, append(args, m.Spec.Engine.Args...)
}

func (d modelDesired) runtimeContainer() corev1.Container {
	m := d.model
	args := []string{
		"serve",
		"--model=" + m.Name,
		"--namespace=" + m.Namespace,
		fmt.Sprintf("--upstream=http://127.0.0.1:%d", m.Spec.Engine.Port),
		fmt.Sprintf("--http-address=:%d", servingv1alpha1.RuntimeHTTPPort),
		fmt.Sprintf("--grpc-address=:%d", servingv1alpha1.RuntimeGRPCPort),
		fmt.Sprintf("--metrics-address=:%d", servingv1alpha1.RuntimeMetricsPort),
	}
	var mounts []corev1.VolumeMount
	if d.cfg.UsageEndpoint != "" {
		args = append(args, "--usage-endpoint="+d.cfg.UsageEndpoint, "--usage-token-file="+usageTokenDir+"/"+usageTokenFile,
			"--usage-ca-file="+usageTokenDir+"/"+usageCAFile)
		mounts = append(mounts, corev1.VolumeMount{Name: "usage-token", MountPath: usageTokenDir, ReadOnly: true})
	}
	return corev1.Container{
		Name:            containerRuntime,
		Image:           d.cfg.RuntimeImage,
		Args:            args,
		VolumeMounts:    mounts,
		SecurityContext: restrictedContext(),
		Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: servingv1alpha1.RuntimeHTTPPort, Protocol: corev1.ProtocolTCP},
			{Name: "grpc", ContainerPort: servingv1alpha1.RuntimeGRPCPort, Protocol: corev1.ProtocolTCP},
			{Name: "metrics", ContainerPort: servingv1alpha1.RuntimeMetricsPort, Protocol: corev1.ProtocolTCP},
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}},
			// Every number set, the server's defaults included: a child that holds what we
			// built is then recognised as unchanged and not written again (see applyOwned).
			PeriodSeconds: 5, FailureThreshold: 3, TimeoutSeconds: 1, SuccessThreshold: 1,
		},
		LivenessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
			PeriodSeconds: 10, FailureThreshold: 6, TimeoutSeconds: 1, SuccessThreshold: 1,
		},
		Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: *resourceMilli(250), corev1.ResourceMemory: *resourceMi(128),
		}},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// DesiredObjects returns the children the reconciler applies for model placed in pool
// (nil for CPU-only models) with the given replica count, without owner references. It
// exists for tools that need the same objects without a manager, such as the reconcile
// benchmark's plain-client baseline.
func DesiredObjects(model *servingv1alpha1.InferenceModel, pool *servingv1alpha1.GPUPool, replicas int32, cfg Config) ([]client.Object, error) {
	d := modelDesired{model: model, pool: pool, replicas: replicas, cfg: cfg}
	deploy, err := d.deployment()
	if err != nil {
		return nil, err
	}
	objs := []client.Object{d.serviceAccount(), d.runtimeRole(), d.runtimeRoleBinding(), d.service()}
	if d.usesDRA() {
		objs = append(objs, d.resourceClaimTemplate())
	}
	objs = append(objs, deploy)
	if replicas > 1 {
		objs = append(objs, d.podDisruptionBudget())
	}
	return objs, nil
}
